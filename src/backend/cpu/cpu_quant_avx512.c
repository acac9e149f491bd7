/* The int path's AVX-512 BW kernel (cpu_quant_avx512.h). */
#if defined(__x86_64__)
#include "backend/cpu/cpu_quant.h"
#include "backend/cpu/cpu_vec_avx512.h"

#define QI_VNNI 0
#define QI_ENTRY anvil_cpu_qmm_avx512
#include "backend/cpu/cpu_quant_avx512.h"
#else
typedef int anvil_cpu_quant_avx512_unused; /* ISO C: no empty translation unit */
#endif
