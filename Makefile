# cdiff build. `make` builds the library, the CLI, the tests and the benchmarks;
# `make test` runs every test; `make SAN=1 test` does it under ASan/UBSan;
# `make MPI=1` builds with mpicc for distributed runs (docs/distributed.md).
CC      ?= gcc
BUILD   ?= build
OPT     ?= -O2
ifeq ($(SAN),1)
BUILD   := build-san
OPT     := -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
endif
# `make MPI=1`: the same program built with mpicc against MPI (src/dist/dist_mpi.c),
# into its own folder (build-mpi, build-mpi-san) so both builds coexist.
ifeq ($(MPI),1)
CC      := mpicc
BUILD   := $(BUILD:build%=build-mpi%)
DIST_CFLAGS := -DCD_WITH_MPI
# MPI=1 CUDA=1: the gradients are all-reduced device to device by NCCL (src/dist/nccl.c)
ifeq ($(CUDA),1)
NCCL_HOME ?= $(or $(CUDA_HOME),/usr/local/cuda)
DIST_CFLAGS += -DCD_WITH_NCCL -I$(NCCL_HOME)/include
NCCL_LIBS := -L$(NCCL_HOME)/lib64 -Wl,-rpath,$(NCCL_HOME)/lib64 -lnccl -lcudart
endif
endif
# `make CUDA=1`: the same programs with the CUDA backend (src/engine/cuda/*.cu,
# docs/cuda.md) in build-cuda/ (build-mpi-cuda with MPI=1, build-san-cuda with SAN=1). The C sources are the same in both builds (the
# backend is found through a weak symbol, engine/device.c), so CBUILD=build
# reuses the plain build's objects and compiles only the CUDA ones (CI).
ifeq ($(CUDA),1)
BUILD   := $(BUILD:build%=build%-cuda)
endif
CBUILD  ?= $(BUILD)
CUDA_HOME ?= /usr/local/cuda
NVCC    ?= $(CUDA_HOME)/bin/nvcc
# sm_90 machine code for the H100/H200, and PTX so that newer GPUs can run it
CUDA_ARCH ?= -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90
NVCCFLAGS := -std=c++20 -O2 -g -lineinfo $(CUDA_ARCH) -Xcompiler -fPIC,-Wall,-Wno-unused-parameter,-Wno-format-truncation -Isrc $(EXTRA_NVCCFLAGS)
CFLAGS  := -std=c11 -D_GNU_SOURCE -g $(OPT) -march=native -ffp-contract=fast -fvect-cost-model=dynamic -fopenmp -Wall -Wextra \
           -Wno-unused-parameter -Wno-sign-compare -Wno-format-truncation -Wno-missing-field-initializers -Isrc $(DIST_CFLAGS) $(EXTRA_CFLAGS)
WHOLE    = -Wl,--whole-archive $(BUILD)/libcdiff.a -Wl,--no-whole-archive
LDLIBS  = -llapacke -lopenblas -lcjson -lpng -ljpeg -lwebp -lz -lm $(NCCL_LIBS) $(LDLIBS_CUDA) $(EXTRA_LDLIBS)
SANFLAGS := -fsanitize=address,undefined
LDFLAGS := -fopenmp $(if $(filter 1,$(SAN)),$(SANFLAGS))

LIB_SRC   := $(shell find src -name '*.c' -not -path 'src/engine/cuda/*' | sort)
LIB_OBJ   := $(LIB_SRC:%.c=$(CBUILD)/%.o)
ifeq ($(CUDA),1)
CU_SRC    := $(sort $(wildcard src/engine/cuda/*.cu))
LIB_OBJ   += $(CU_SRC:%.cu=$(BUILD)/%.o)
LDLIBS_CUDA := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcudart -lstdc++ -ldl -lrt -lpthread
endif
CLI_SRC   := $(wildcard cli/*.c)
CLI_OBJ   := $(CLI_SRC:%.c=$(CBUILD)/%.o)
TEST_SRC  := $(wildcard tests/test_*.c)
TEST_BIN  := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
TEST_UTIL := $(CBUILD)/tests/testutil.o
BENCH_SRC := $(wildcard bench/bench_*.c)
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)
TOOL_SRC  := $(wildcard tools/*.c)
TOOL_BIN  := $(TOOL_SRC:tools/%.c=$(BUILD)/tools/%)
FAULT_LIB := $(BUILD)/tests/libfailwrite.so

# `cdiff --version` names the commit it was built from: $(BUILD)/git_commit.h is
# rewritten only when HEAD moves, so only cli/main.o rebuilds then.
GIT_COMMIT := $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
$(shell mkdir -p $(CBUILD) && echo '#define CD_GIT_COMMIT "$(GIT_COMMIT)"' > $(CBUILD)/git_commit.h.new && \
  { cmp -s $(CBUILD)/git_commit.h.new $(CBUILD)/git_commit.h || mv $(CBUILD)/git_commit.h.new $(CBUILD)/git_commit.h; }; \
  rm -f $(CBUILD)/git_commit.h.new)
$(CBUILD)/cli/main.o: CFLAGS += -I$(CBUILD)

.PHONY: all test check bench clean demo cuda-compile
all: $(BUILD)/libcdiff.a $(BUILD)/cdiff $(TEST_BIN) $(BENCH_BIN) $(TOOL_BIN) $(FAULT_LIB)

$(CBUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/src/engine/cuda/%.o: src/engine/cuda/%.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/libcdiff.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/cdiff: $(CLI_OBJ) $(BUILD)/libcdiff.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $(CLI_OBJ) $(WHOLE) $(LDLIBS)

$(BUILD)/tests/%: $(CBUILD)/tests/%.o $(TEST_UTIL) $(BUILD)/libcdiff.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(TEST_UTIL) $(WHOLE) $(LDLIBS)

# the LD_PRELOAD write-failure library of tests/test_fault_injection.c (never sanitized: it is preloaded)
$(BUILD)/tests/libfailwrite.so: tests/failwrite.c
	@mkdir -p $(dir $@)
	$(CC) -shared -fPIC -O2 -Wall -Wextra -o $@ $< -ldl

$(BUILD)/bench/%: $(CBUILD)/bench/%.o $(BUILD)/libcdiff.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(WHOLE) $(LDLIBS)

$(BUILD)/tools/%: $(CBUILD)/tools/%.o $(BUILD)/libcdiff.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(WHOLE) $(LDLIBS)

test: $(BUILD)/cdiff $(TEST_BIN) $(TOOL_BIN) $(FAULT_LIB)
	@sh tests/run.sh $(TEST_BIN)

# check = the test suite twice: optimised, and under ASan/UBSan (one summary
# line). Each test runs the tools of its own build, so the tests that spawn
# cdiff or gen_sd_random run the sanitized ones in the second pass.
# With OpenMPI installed (scripts/install-deps.sh) it also builds `make MPI=1`
# (optimised and sanitized) and runs the distributed tests (tests/test_dist.c,
# which start that build's cdiff under mpirun).
MPI_CHECK := $(shell command -v mpicc >/dev/null 2>&1 && command -v mpirun >/dev/null 2>&1 && echo 1)
MPI_TESTS := $(if $(MPI_CHECK),build-mpi/tests/test_dist build-mpi-san/tests/test_dist)
# where NCCL's header is installed (a CUDA toolkit), src/dist/nccl.c is compiled
# with NCCL on (never run: CI has no GPU), so that it cannot rot
NCCL_CHECK := $(wildcard $(or $(CUDA_HOME),/usr/local/cuda)/include/nccl.h)
.PHONY: nccl-compile
nccl-compile:
	@mkdir -p build-mpi
	mpicc $(CFLAGS) -DCD_WITH_MPI -DCD_WITH_NCCL -I$(dir $(NCCL_CHECK)) -c src/dist/nccl.c -o build-mpi/nccl-check.o
check:
	@$(MAKE) --no-print-directory -s all >/dev/null
	@$(MAKE) --no-print-directory -s cuda-compile
	@$(MAKE) --no-print-directory -s SAN=1 build-san/cdiff build-san/tests/libfailwrite.so $(TEST_SRC:tests/%.c=build-san/tests/%) \
	  $(TOOL_SRC:tools/%.c=build-san/tools/%) >/dev/null
	@$(if $(MPI_CHECK),$(MAKE) --no-print-directory -s MPI=1 build-mpi/cdiff build-mpi/tests/test_dist >/dev/null,true)
	@$(if $(MPI_CHECK),$(MAKE) --no-print-directory -s MPI=1 SAN=1 build-mpi-san/cdiff build-mpi-san/tests/test_dist >/dev/null,true)
	@$(if $(and $(MPI_CHECK),$(NCCL_CHECK)),$(MAKE) --no-print-directory -s nccl-compile,true)
	@sh tests/run.sh $(TEST_BIN) $(TEST_SRC:tests/%.c=build-san/tests/%) $(MPI_TESTS) $(if $(wildcard $(NVCC)),build-cuda/tests/test_cuda)

# Where nvcc exists, compile (never run: CI has no GPU) the CUDA backend and
# link the CUDA build's cdiff and test_cuda against the plain build's objects,
# so that a broken CUDA build never lands. Without nvcc it says so and passes.
cuda-compile:
ifneq ($(wildcard $(NVCC)),)
	@nice -n 5 $(MAKE) --no-print-directory -s CUDA=1 CBUILD=build build-cuda/cdiff build-cuda/tests/test_cuda >/dev/null
else
	@echo "cuda-compile: no $(NVCC); the CUDA backend was not compiled"
endif

# the README's main job: install, build, fine-tune the shipped model on a new concept, sample grids
demo:
	@sh scripts/demo.sh

bench: $(BENCH_BIN)
	@for b in $(BENCH_BIN); do $$b || exit 1; done

clean:
	rm -rf build build-san build-mpi build-mpi-san build-cuda build-san-cuda build-mpi-cuda

-include $(shell find $(sort $(BUILD) $(CBUILD)) -name '*.d' 2>/dev/null)
