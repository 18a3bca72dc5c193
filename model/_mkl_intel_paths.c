/* Loaded by model/mkl_dispatch.py (ctypes, RTLD_GLOBAL) before torch on AMD CPUs; never imported as a module.
 *
 * The MKL inside torch's wheels asks this function whether the CPU is Intel's and, when it
 * is not, runs its generic code paths (SSE2-level FFTs and vector math) whatever the CPU
 * supports. A definition that the dynamic linker finds before torch's own one answers yes,
 * so MKL chooses its code path from the CPU's feature bits (AVX2, AVX-512) as on Intel.
 */
int mkl_serv_intel_cpu_true(void) { return 1; }
