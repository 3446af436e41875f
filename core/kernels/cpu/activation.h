#ifndef MOEMESH_CORE_KERNELS_CPU_ACTIVATION_H_
#define MOEMESH_CORE_KERNELS_CPU_ACTIVATION_H_

namespace moemesh {

// out[i] = silu(gate[i]) * up[i]; out may alias gate.
void SiluMul(const float* gate, const float* up, int n, float* out);

// In-place softmax of n values, max-subtracted, fp32.
void Softmax(float* x, int n);


}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CPU_ACTIVATION_H_
