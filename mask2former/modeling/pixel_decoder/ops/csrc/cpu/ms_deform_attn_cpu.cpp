// CPU kernels of multi-scale deformable attention (float32 and float64).
//
// value is (N, S, M, D) contiguous, so the D channels of one head at one pixel are
// contiguous: for each (n, q, m) the bilinear corners and weights are computed once per
// (level, point) and the channel loops run over contiguous memory (vectorised by the
// compiler). Corners outside the map point at a row of zeros (reads) or a scratch row
// (gradient writes) so the channel loops have no branches.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "ms_deform_attn.h"

namespace mask2former {
namespace {

struct Level {
  int64_t height;
  int64_t width;
  int64_t start;
};

// Reads the level geometry and checks that every level lies inside value's S positions, so
// the kernels can never read or write out of bounds.
std::vector<Level> read_levels(
    const at::Tensor& spatial_shapes, const at::Tensor& level_start, int64_t num_values) {
  const auto shapes = spatial_shapes.accessor<int64_t, 2>();
  const auto starts = level_start.accessor<int64_t, 1>();
  std::vector<Level> levels(shapes.size(0));
  for (int64_t l = 0; l < shapes.size(0); ++l) {
    levels[l] = {shapes[l][0], shapes[l][1], starts[l]};
    TORCH_CHECK(
        levels[l].height >= 0 && levels[l].width >= 0 && levels[l].start >= 0 &&
            levels[l].start + levels[l].height * levels[l].width <= num_values,
        "ms_deform_attn: level ", l, " (H=", levels[l].height, ", W=", levels[l].width,
        ", start=", levels[l].start, ") does not fit in value's ", num_values, " positions");
  }
  return levels;
}

// The four bilinear corners of one sampling point: offsets (in elements) of their channel
// rows in value, relative to value[n, 0, m, 0], or -1 when outside the map.
template <typename scalar_t>
struct Corners {
  int64_t offset[4];
  scalar_t weight[4];
  scalar_t low_h, low_w, high_h, high_w;  // 1 - frac and frac along each axis
  bool any;                               // false when the point reads only zeros
};

template <typename scalar_t>
inline Corners<scalar_t> corners_at(
    const Level& level, scalar_t x, scalar_t y, int64_t row_stride) {
  Corners<scalar_t> c;
  const scalar_t h_im = y * static_cast<scalar_t>(level.height) - scalar_t(0.5);
  const scalar_t w_im = x * static_cast<scalar_t>(level.width) - scalar_t(0.5);
  c.any = h_im > -1 && w_im > -1 && h_im < level.height && w_im < level.width;
  if (!c.any) {
    return c;
  }
  const int64_t h0 = static_cast<int64_t>(std::floor(h_im));
  const int64_t w0 = static_cast<int64_t>(std::floor(w_im));
  const int64_t h1 = h0 + 1;
  const int64_t w1 = w0 + 1;
  c.high_h = h_im - static_cast<scalar_t>(h0);
  c.high_w = w_im - static_cast<scalar_t>(w0);
  c.low_h = 1 - c.high_h;
  c.low_w = 1 - c.high_w;
  const bool valid_h[2] = {h0 >= 0, h1 < level.height};
  const bool valid_w[2] = {w0 >= 0, w1 < level.width};
  const int64_t hs[2] = {h0, h1};
  const int64_t ws[2] = {w0, w1};
  const scalar_t wh[2] = {c.low_h, c.high_h};
  const scalar_t ww[2] = {c.low_w, c.high_w};
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) {
      const int k = 2 * i + j;
      c.weight[k] = wh[i] * ww[j];
      c.offset[k] = valid_h[i] && valid_w[j]
          ? (level.start + hs[i] * level.width + ws[j]) * row_stride
          : -1;
    }
  }
  return c;
}

// Corners of all L * P sampling points of one (n, q, m), with their channel rows in value
// (and in grad_value when given) prefetched: sampling locations are data, so the rows are
// scattered over value and the kernels are bound by memory latency; asking for all of them
// before using any of them overlaps those misses.
template <typename scalar_t>
inline void corners_of_query(
    const std::vector<Level>& levels,
    int64_t points,
    const scalar_t* loc,
    const scalar_t* head_value,
    int64_t row_stride,
    int64_t row_bytes,
    const scalar_t* head_grad_value,
    Corners<scalar_t>* corners) {
  for (size_t l = 0; l < levels.size(); ++l) {
    for (int64_t p = 0; p < points; ++p, loc += 2, ++corners) {
      *corners = corners_at<scalar_t>(levels[l], loc[0], loc[1], row_stride);
      if (!corners->any) {
        continue;
      }
      for (int k = 0; k < 4; ++k) {
        if (corners->offset[k] >= 0) {
          const char* row = reinterpret_cast<const char*>(head_value + corners->offset[k]);
          for (int64_t byte = 0; byte < row_bytes; byte += 64) {
            __builtin_prefetch(row + byte);
          }
          if (head_grad_value != nullptr) {
            const char* grad_row =
                reinterpret_cast<const char*>(head_grad_value + corners->offset[k]);
            for (int64_t byte = 0; byte < row_bytes; byte += 64) {
              __builtin_prefetch(grad_row + byte, 1);
            }
          }
        }
      }
    }
  }
}

// Prefetches [data, data + bytes) for reading (write = 0) or writing (write = 1).
template <int write>
inline void prefetch_span(const void* data, int64_t bytes) {
  if (bytes <= 0) {
    return;
  }
  const char* begin = static_cast<const char*>(data);
  for (int64_t byte = 0; byte < bytes; byte += 64) {
    __builtin_prefetch(begin + byte, write);
  }
  __builtin_prefetch(begin + bytes - 1, write);  // the last line when bytes % 64 != 0
}

template <typename scalar_t>
void forward_kernel(
    const at::Tensor& value,
    const std::vector<Level>& levels,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    at::Tensor& output) {
  const int64_t batch = value.size(0), num_values = value.size(1);
  const int64_t heads = value.size(2), channels = value.size(3);
  const int64_t queries = sampling_locations.size(1);
  const int64_t num_levels = sampling_locations.size(3), points = sampling_locations.size(4);
  const int64_t row_stride = heads * channels;
  const scalar_t* value_data = value.const_data_ptr<scalar_t>();
  const scalar_t* loc_data = sampling_locations.const_data_ptr<scalar_t>();
  const scalar_t* attn_data = attention_weights.const_data_ptr<scalar_t>();
  scalar_t* out_data = output.mutable_data_ptr<scalar_t>();
  // about 4096 multiply-adds per chunk of (n, q, m)
  const int64_t work = std::max<int64_t>(1, num_levels * points * channels);
  const int64_t grain = std::max<int64_t>(1, 4096 / work);
  const int64_t row_bytes = channels * static_cast<int64_t>(sizeof(scalar_t));

  at::parallel_for(0, batch * queries * heads, grain, [&](int64_t begin, int64_t end) {
    const std::vector<scalar_t> zeros(channels, scalar_t(0));
    // index == (n * Q + q) * M + m, the (n, q, m) position in all per-query tensors
    const auto head_value_of = [&](int64_t index) {
      return value_data + index / (heads * queries) * num_values * row_stride +
          index % heads * channels;
    };
    // Two buffers: the corners of the next (n, q, m) are computed (and their rows
    // prefetched) before the current one is accumulated.
    std::vector<Corners<scalar_t>> buffers[2] = {
        std::vector<Corners<scalar_t>>(num_levels * points),
        std::vector<Corners<scalar_t>>(num_levels * points)};
    corners_of_query<scalar_t>(
        levels, points, loc_data + begin * num_levels * points * 2, head_value_of(begin),
        row_stride, row_bytes, nullptr, buffers[begin % 2].data());
    for (int64_t index = begin; index < end; ++index) {
      if (index + 1 < end) {
        corners_of_query<scalar_t>(
            levels, points, loc_data + (index + 1) * num_levels * points * 2,
            head_value_of(index + 1), row_stride, row_bytes, nullptr,
            buffers[(index + 1) % 2].data());
      }
      const auto& corners = buffers[index % 2];
      const scalar_t* attn = attn_data + index * num_levels * points;
      const scalar_t* head_value = head_value_of(index);
      scalar_t* __restrict__ out = out_data + index * channels;
      std::fill(out, out + channels, scalar_t(0));
      for (int64_t point = 0; point < num_levels * points; ++point) {
        const auto& c = corners[point];
        if (!c.any) {
          continue;
        }
        const scalar_t* v[4];
        scalar_t w[4];
        for (int k = 0; k < 4; ++k) {
          v[k] = c.offset[k] >= 0 ? head_value + c.offset[k] : zeros.data();
          w[k] = c.offset[k] >= 0 ? attn[point] * c.weight[k] : scalar_t(0);
        }
        for (int64_t d = 0; d < channels; ++d) {
          out[d] += w[0] * v[0][d] + w[1] * v[1][d] + w[2] * v[2][d] + w[3] * v[3][d];
        }
      }
    }
  });
}

template <typename scalar_t>
void backward_kernel(
    const at::Tensor& value,
    const std::vector<Level>& levels,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    const at::Tensor& grad_output,
    at::Tensor& grad_value,
    at::Tensor& grad_locations,
    at::Tensor& grad_weights) {
  const int64_t batch = value.size(0), num_values = value.size(1);
  const int64_t heads = value.size(2), channels = value.size(3);
  const int64_t queries = sampling_locations.size(1);
  const int64_t num_levels = sampling_locations.size(3), points = sampling_locations.size(4);
  const int64_t row_stride = heads * channels;
  const scalar_t* value_data = value.const_data_ptr<scalar_t>();
  const scalar_t* loc_data = sampling_locations.const_data_ptr<scalar_t>();
  const scalar_t* attn_data = attention_weights.const_data_ptr<scalar_t>();
  const scalar_t* grad_out_data = grad_output.const_data_ptr<scalar_t>();
  scalar_t* grad_value_data = grad_value.mutable_data_ptr<scalar_t>();
  scalar_t* grad_loc_data = grad_locations.mutable_data_ptr<scalar_t>();
  scalar_t* grad_attn_data = grad_weights.mutable_data_ptr<scalar_t>();

  const int64_t row_bytes = channels * static_cast<int64_t>(sizeof(scalar_t));
  constexpr int64_t kQueriesAhead = 4;

  // One task per (n, m): every grad_value element belongs to exactly one task, so the
  // scatter needs neither atomics nor per-thread copies.
  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    const std::vector<scalar_t> zeros(channels, scalar_t(0));
    std::vector<scalar_t> scratch(channels, scalar_t(0));
    // Two buffers: the corners of query q + 1 are computed (and their rows prefetched)
    // before query q is processed.
    std::vector<Corners<scalar_t>> buffers[2] = {
        std::vector<Corners<scalar_t>>(num_levels * points),
        std::vector<Corners<scalar_t>>(num_levels * points)};
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / heads;
      const int64_t m = task % heads;
      const scalar_t* head_value = value_data + n * num_values * row_stride + m * channels;
      scalar_t* head_grad_value = grad_value_data + n * num_values * row_stride + m * channels;
      const auto locations_of = [&](int64_t q) {
        return loc_data + ((n * queries + q) * heads + m) * num_levels * points * 2;
      };
      if (queries > 0) {
        corners_of_query<scalar_t>(
            levels, points, locations_of(0), head_value, row_stride, row_bytes, head_grad_value,
            buffers[0].data());
      }
      for (int64_t q = 0; q < queries; ++q) {
        // One task walks the queries of one head, so its per-query rows are M rows apart:
        // fetch them a few queries ahead.
        if (q + kQueriesAhead < queries) {
          const int64_t ahead = (n * queries + q + kQueriesAhead) * heads + m;
          const int64_t point_bytes = num_levels * points * static_cast<int64_t>(sizeof(scalar_t));
          prefetch_span<0>(loc_data + ahead * num_levels * points * 2, 2 * point_bytes);
          prefetch_span<0>(attn_data + ahead * num_levels * points, point_bytes);
          prefetch_span<0>(grad_out_data + ahead * channels, row_bytes);
          prefetch_span<1>(grad_loc_data + ahead * num_levels * points * 2, 2 * point_bytes);
          prefetch_span<1>(grad_attn_data + ahead * num_levels * points, point_bytes);
        }
        if (q + 1 < queries) {
          corners_of_query<scalar_t>(
              levels, points, locations_of(q + 1), head_value, row_stride, row_bytes,
              head_grad_value, buffers[(q + 1) % 2].data());
        }
        const auto& corners = buffers[q % 2];
        const int64_t index = (n * queries + q) * heads + m;
        const scalar_t* attn = attn_data + index * num_levels * points;
        scalar_t* grad_loc = grad_loc_data + index * num_levels * points * 2;
        scalar_t* grad_attn = grad_attn_data + index * num_levels * points;
        const scalar_t* grad_out = grad_out_data + index * channels;
        for (int64_t point = 0; point < num_levels * points; ++point) {
          const auto& c = corners[point];
          const Level& level = levels[point / points];
          if (!c.any) {
            grad_loc[2 * point] = grad_loc[2 * point + 1] = grad_attn[point] = scalar_t(0);
            continue;
          }
          const scalar_t* v[4];
          scalar_t* gv[4];
          scalar_t w[4];
          for (int k = 0; k < 4; ++k) {
            const bool valid = c.offset[k] >= 0;
            v[k] = valid ? head_value + c.offset[k] : zeros.data();
            gv[k] = valid ? head_grad_value + c.offset[k] : scratch.data();
            w[k] = valid ? attn[point] * c.weight[k] : scalar_t(0);
          }
          // d(sample)/d(h_im) and d(sample)/d(w_im) per corner (top-left, top-right,
          // bottom-left, bottom-right).
          const scalar_t dh[4] = {-c.low_w, -c.high_w, c.low_w, c.high_w};
          const scalar_t dw[4] = {-c.low_h, c.low_h, -c.high_h, c.high_h};
          scalar_t sum_sample = 0, sum_h = 0, sum_w = 0;
#pragma omp simd reduction(+ : sum_sample, sum_h, sum_w)
          for (int64_t d = 0; d < channels; ++d) {
            const scalar_t g = grad_out[d];
            const scalar_t v0 = v[0][d], v1 = v[1][d], v2 = v[2][d], v3 = v[3][d];
            sum_sample +=
                g * (c.weight[0] * v0 + c.weight[1] * v1 + c.weight[2] * v2 + c.weight[3] * v3);
            sum_h += g * (dh[0] * v0 + dh[1] * v1 + dh[2] * v2 + dh[3] * v3);
            sum_w += g * (dw[0] * v0 + dw[1] * v1 + dw[2] * v2 + dw[3] * v3);
          }
          for (int k = 0; k < 4; ++k) {
            scalar_t* __restrict__ target = gv[k];
            const scalar_t weight = w[k];
            for (int64_t d = 0; d < channels; ++d) {
              target[d] += weight * grad_out[d];
            }
          }
          grad_attn[point] = sum_sample;
          grad_loc[2 * point] = attn[point] * sum_w * static_cast<scalar_t>(level.width);
          grad_loc[2 * point + 1] = attn[point] * sum_h * static_cast<scalar_t>(level.height);
        }
      }
    }
  });
}

}  // namespace

at::Tensor ms_deform_attn_forward_cpu(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  check_ms_deform_attn_inputs(
      value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  TORCH_CHECK(
      value.scalar_type() == at::kFloat || value.scalar_type() == at::kDouble,
      "ms_deform_attn CPU kernel supports float32 and float64, got ", value.scalar_type(),
      " (use the reference implementation)");
  const auto value_c = value.contiguous();
  const auto loc_c = sampling_locations.contiguous();
  const auto attn_c = attention_weights.contiguous();
  const auto levels =
      read_levels(spatial_shapes.contiguous(), level_start_index.contiguous(), value.size(1));
  auto output = at::empty(
      {value.size(0), sampling_locations.size(1), value.size(2), value.size(3)}, value.options());
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
    forward_kernel<scalar_t>(value_c, levels, loc_c, attn_c, output);
  });
  return output.view({value.size(0), sampling_locations.size(1), value.size(2) * value.size(3)});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    const at::Tensor& grad_output) {
  check_ms_deform_attn_inputs(
      value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  TORCH_CHECK(
      value.scalar_type() == at::kFloat || value.scalar_type() == at::kDouble,
      "ms_deform_attn CPU kernel supports float32 and float64, got ", value.scalar_type());
  TORCH_CHECK(
      grad_output.numel() ==
              value.size(0) * sampling_locations.size(1) * value.size(2) * value.size(3) &&
          grad_output.scalar_type() == value.scalar_type(),
      "ms_deform_attn_backward: grad_output must be (N, Q, M * D) of value's dtype, got ",
      grad_output.sizes(), " ", grad_output.scalar_type());
  const auto value_c = value.contiguous();
  const auto loc_c = sampling_locations.contiguous();
  const auto attn_c = attention_weights.contiguous();
  const auto grad_out_c = grad_output.contiguous();
  const auto levels =
      read_levels(spatial_shapes.contiguous(), level_start_index.contiguous(), value.size(1));
  auto grad_value = at::zeros_like(value_c);
  auto grad_locations = at::empty_like(loc_c);
  auto grad_weights = at::empty_like(attn_c);
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
    backward_kernel<scalar_t>(
        value_c, levels, loc_c, attn_c, grad_out_c, grad_value, grad_locations, grad_weights);
  });
  return {grad_value, grad_locations, grad_weights};
}

}  // namespace mask2former

TORCH_LIBRARY_IMPL(mask2former, CPU, m) {
  m.impl("ms_deform_attn_forward", &mask2former::ms_deform_attn_forward_cpu);
  m.impl("ms_deform_attn_backward", &mask2former::ms_deform_attn_backward_cpu);
}
