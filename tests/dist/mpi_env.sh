# Sourced by tests/dist/test_mpi*.sh: the OpenMPI settings the mpirun tests need.
# mpirun refuses root unless told (CI and containers run as root); oversubscribe: 2 ranks may
# exceed the machine's slots; vader's single-copy needs ptrace rights containers often lack; one
# compute thread per process.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
export OMPI_MCA_rmaps_base_oversubscribe=1 BCOS_NUM_THREADS=1
# Under the sanitizers (scripts/test --sanitize): OpenMPI keeps its plugins loaded and LeakSanitizer
# unwinds fully, so what OpenMPI keeps to exit is recognised by tests/dist/lsan.supp (unloaded
# plugins and short stacks hide the library a leak belongs to).
if [[ -n "${ASAN_OPTIONS:-}" ]]; then
  export OMPI_MCA_mca_base_component_disable_dlclose=1 ASAN_OPTIONS="$ASAN_OPTIONS:fast_unwind_on_malloc=0"
fi
