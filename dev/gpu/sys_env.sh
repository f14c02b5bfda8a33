# dev/gpu/sys_env.sh - sourced by check.sh and world.sh on the device machine: CUDA on the
# PATH, and the C dependencies carried from the build machine (dev/gpu/carry/sys.tar.xz,
# made by prepare.sh) unpacked into /tmp/cdiff-sys and put on the compiler's and loader's
# paths. Sets SYS_NOTE to what it did.
export PATH=$PATH:/usr/local/cuda/bin
export CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)")")}
SYS=/tmp/cdiff-sys
if [ -f dev/gpu/carry/sys.tar.xz ]; then
  rm -rf $SYS && mkdir -p $SYS && tar -C $SYS --strip-components=1 -xJf dev/gpu/carry/sys.tar.xz
  for f in $SYS/lib/*.so.*; do b=${f%%.so.*}; ln -sf "$(basename "$f")" "$b.so"; done
  ln -sf libpng16.so.16 $SYS/lib/libpng.so # -lpng
  export CPATH=$SYS/include${CPATH:+:$CPATH}
  export LIBRARY_PATH=$SYS/lib${LIBRARY_PATH:+:$LIBRARY_PATH}
  export LD_LIBRARY_PATH=$SYS/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  SYS_NOTE="C dependencies from dev/gpu/carry/sys.tar.xz"
else
  SYS_NOTE="no dev/gpu/carry/sys.tar.xz: using the machine's own C libraries (run dev/gpu/prepare.sh first if the build fails)"
fi
export CDIFF_NO_REEXEC=1 OMP_WAIT_POLICY=passive OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-Haswell}
