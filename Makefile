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
# MPI=1: only src/dist and tests/test_dist.c test CD_WITH_MPI; with CBUILD=build
# (or build-san) every other object is the plain build's (`make check`)
ifeq ($(MPI),1)
MPI_SRC := $(wildcard src/dist/*.c) tests/test_dist.c
endif
objdir   = $(if $(filter $(1),$(MPI_SRC)),$(BUILD),$(CBUILD))
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
LIB_OBJ   := $(foreach f,$(LIB_SRC),$(call objdir,$(f))/$(f:.c=.o))
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
# (its own temporary name per make: `make check` runs several at once on one CBUILD)
$(shell mkdir -p $(CBUILD) && echo '#define CD_GIT_COMMIT "$(GIT_COMMIT)"' > $(CBUILD)/git_commit.h.new$$$$ && \
  { cmp -s $(CBUILD)/git_commit.h.new$$$$ $(CBUILD)/git_commit.h || mv $(CBUILD)/git_commit.h.new$$$$ $(CBUILD)/git_commit.h; }; \
  rm -f $(CBUILD)/git_commit.h.new$$$$)
$(CBUILD)/cli/main.o: CFLAGS += -I$(CBUILD)

.PHONY: all test check bench clean demo cuda-compile
all: $(BUILD)/libcdiff.a $(BUILD)/cdiff $(TEST_BIN) $(BENCH_BIN) $(TOOL_BIN) $(FAULT_LIB)

$(CBUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

ifneq ($(MPI_SRC),)
$(BUILD)/src/dist/%.o: src/dist/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@
$(BUILD)/tests/test_dist.o: tests/test_dist.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@
$(BUILD)/tests/test_dist: $(BUILD)/tests/test_dist.o $(TEST_UTIL) $(BUILD)/libcdiff.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(TEST_UTIL) $(WHOLE) $(LDLIBS)
endif

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

# tests/run.sh runs TEST_JOBS test binaries at a time (the cores, at most 4:
# a sanitized test takes up to ~0.7 GB) and prints each one's lines whole, in
# the order given
TEST_JOBS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ "$$n" -gt 4 ] && n=4; echo $$n)
test: $(BUILD)/cdiff $(TEST_BIN) $(TOOL_BIN) $(FAULT_LIB)
	@CDIFF_TEST_JOBS=$(TEST_JOBS) sh tests/run.sh $(TEST_BIN)

# check = the test suite twice: optimised, and under ASan/UBSan (one summary
# line). Each test runs the tools of its own build, so the tests that spawn
# cdiff or gen_sd_random run the sanitized ones in the second pass.
# With OpenMPI installed (scripts/install-deps.sh) it also builds `make MPI=1`
# (optimised and sanitized) and runs the distributed tests (tests/test_dist.c,
# which start that build's cdiff under mpirun).
MPI_CHECK := $(shell command -v mpicc >/dev/null 2>&1 && command -v mpirun >/dev/null 2>&1 && echo 1)
# where NCCL's header is installed (a CUDA toolkit), src/dist/nccl.c is compiled
# with NCCL on (never run: CI has no GPU), so that it cannot rot
NCCL_CHECK := $(wildcard $(or $(CUDA_HOME),/usr/local/cuda)/include/nccl.h)
.PHONY: nccl-compile
nccl-compile:
	@mkdir -p build-mpi
	mpicc $(CFLAGS) -DCD_WITH_MPI -DCD_WITH_NCCL -I$(dir $(NCCL_CHECK)) -c src/dist/nccl.c -o build-mpi/nccl-check.o
# The builds of `make -j2 check` run side by side where they can: the plain and
# the sanitized one at once, then the CUDA and MPI ones, which link the plain
# (or sanitized) build's objects and compile only their own files.
CHECK_BUILDS := check-build check-build-san check-build-cuda $(if $(MPI_CHECK),check-build-mpi check-build-mpi-san) \
  $(if $(and $(MPI_CHECK),$(NCCL_CHECK)),check-build-nccl)
.PHONY: $(CHECK_BUILDS)
check-build:
	@$(MAKE) --no-print-directory -s all >/dev/null
check-build-san:
	@$(MAKE) --no-print-directory -s SAN=1 build-san/cdiff build-san/tests/libfailwrite.so $(TEST_SRC:tests/%.c=build-san/tests/%) \
	  $(TOOL_SRC:tools/%.c=build-san/tools/%) >/dev/null
check-build-cuda: check-build
	@$(MAKE) --no-print-directory -s cuda-compile
check-build-mpi: check-build
	@$(MAKE) --no-print-directory -s MPI=1 CBUILD=build build-mpi/cdiff build-mpi/tests/test_dist >/dev/null
check-build-mpi-san: check-build-san
	@$(MAKE) --no-print-directory -s MPI=1 SAN=1 CBUILD=build-san build-mpi-san/cdiff build-mpi-san/tests/test_dist >/dev/null
check-build-nccl: check-build-mpi
	@$(MAKE) --no-print-directory -s nccl-compile
# The tests, longest first so that TEST_JOBS binaries at a time end together:
# the sanitized distributed test (the longest), the sanitized pass, the
# optimised pass, the optimised distributed test, and test_cuda (its skips
# say why: no GPU here).
CHECK_TESTS := $(if $(MPI_CHECK),build-mpi-san/tests/test_dist) $(TEST_SRC:tests/%.c=build-san/tests/%) $(TEST_BIN) \
  $(if $(MPI_CHECK),build-mpi/tests/test_dist) $(if $(wildcard $(NVCC)),build-cuda/tests/test_cuda)
check: $(CHECK_BUILDS)
	@CDIFF_TEST_JOBS=$(TEST_JOBS) sh tests/run.sh $(CHECK_TESTS)

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
