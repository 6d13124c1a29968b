// Multi-scale deformable attention: shared declarations of the CPU and CUDA kernels.
//
// Shape legend: N batch, S value positions over all levels, M heads, D channels per head,
// Q queries, L levels, P sampling points per level.
//
//   value               (N, S, M, D)          float32 / float64 / float16 / bfloat16
//   spatial_shapes      (L, 2) int64          (H_l, W_l) of each level
//   level_start_index   (L,) int64            offset of each level in S
//   sampling_locations  (N, Q, M, L, P, 2)    normalised (x, y); value's dtype for float32 /
//                                             float64 values, float32 for half types
//   attention_weights   (N, Q, M, L, P)       same dtype as sampling_locations
//   output              (N, Q, M * D)         value's dtype
//
// Bilinear sampling with zero padding and align_corners=False: location x in [0, 1] maps
// to pixel coordinate x * W - 0.5, so pixel centres sit at (i + 0.5) / W.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace mask2former {

// Checks shared by all devices; returns nothing, raises c10::Error with a readable message.
void check_ms_deform_attn_inputs(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights);

at::Tensor ms_deform_attn_forward_cpu(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights);

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    const at::Tensor& grad_output);

}  // namespace mask2former
