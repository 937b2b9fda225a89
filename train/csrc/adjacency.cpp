// One direction of a view's transitions as compressed rows with room per node (train/adjacency.py):
// node u's neighbours sit in slots indptr[u] .. indptr[u] + fill[u], sorted, and its room runs to
// the next node's start (the last node's to `last_end`). Unused slots weigh 0. DGL walks these
// arrays where they lie; these loops look edges up, insert them into the room and lay the rows out
// afresh, so that a round costs the edges it reads, not every edge (DGL's add_edges copies them all
// and rebuilds its formats).
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

using at::Tensor;

namespace {

void check_layout(const Tensor& indptr, const Tensor& fill, const Tensor& indices, const Tensor& weight) {
  TORCH_CHECK(indptr.scalar_type() == at::kInt && fill.scalar_type() == at::kInt && indices.scalar_type() == at::kInt &&
                  weight.scalar_type() == at::kFloat,
              "adjacency: int32 indptr, fill and indices and float32 weights are required");
  TORCH_CHECK(indptr.is_contiguous() && fill.is_contiguous() && indices.is_contiguous() && weight.is_contiguous(),
              "adjacency: contiguous arrays are required");
}

void check_edges(const Tensor& src, const Tensor& dst) {
  TORCH_CHECK(src.scalar_type() == at::kLong && dst.scalar_type() == at::kLong && src.is_contiguous() &&
                  dst.is_contiguous() && src.numel() == dst.numel(),
              "adjacency: two contiguous int64 vectors of endpoints are required");
}

}  // namespace

// The slot of each edge (src[i], dst[i]), -1 where there is none. O(log degree) per edge.
Tensor find(Tensor indptr, Tensor fill, Tensor indices, Tensor src, Tensor dst, int64_t nodes) {
  TORCH_CHECK(indptr.scalar_type() == at::kInt && fill.scalar_type() == at::kInt && indices.scalar_type() == at::kInt &&
                  indptr.is_contiguous() && fill.is_contiguous() && indices.is_contiguous(),
              "adjacency: contiguous int32 indptr, fill and indices are required");
  check_edges(src, dst);
  const int32_t* start = indptr.data_ptr<int32_t>();
  const int32_t* used = fill.data_ptr<int32_t>();
  const int32_t* neighbour = indices.data_ptr<int32_t>();
  const int64_t* s = src.data_ptr<int64_t>();
  const int64_t* d = dst.data_ptr<int64_t>();
  Tensor slots = torch::full({src.numel()}, -1, torch::kLong);
  int64_t* out = slots.data_ptr<int64_t>();
  for (int64_t i = 0; i < src.numel(); ++i) {
    if (s[i] < 0 || s[i] >= nodes) continue;
    const int32_t* first = neighbour + start[s[i]];
    const int32_t* last = first + used[s[i]];
    const int32_t* at = std::lower_bound(first, last, static_cast<int32_t>(d[i]));
    if (at != last && *at == d[i]) out[i] = at - neighbour;
  }
  return slots;
}

// Inserts the edges (src[i], dst[i]) of weight w[i], none of which exists yet, into their nodes'
// room, keeping each node's neighbours sorted; an edge given twice is inserted once, with its last
// weight. Returns the positions (in the input) of the edges whose node had no room left: nothing of
// that node is inserted, and the caller lays the rows out afresh before inserting them again.
Tensor insert(Tensor indptr, Tensor fill, Tensor indices, Tensor weight, Tensor src, Tensor dst, Tensor w,
              int64_t nodes, int64_t last_end) {
  check_layout(indptr, fill, indices, weight);
  check_edges(src, dst);
  TORCH_CHECK(w.scalar_type() == at::kFloat && w.is_contiguous() && w.numel() == src.numel(),
              "adjacency: one float32 weight per edge is required");
  const int32_t* start = indptr.data_ptr<int32_t>();
  int32_t* used = fill.data_ptr<int32_t>();
  int32_t* neighbour = indices.data_ptr<int32_t>();
  float* slot_weight = weight.data_ptr<float>();
  const int64_t* s = src.data_ptr<int64_t>();
  const int64_t* d = dst.data_ptr<int64_t>();
  const float* edge_weight = w.data_ptr<float>();
  const int64_t n = src.numel();
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return s[a] != s[b] ? s[a] < s[b] : d[a] < d[b]; });
  std::vector<int64_t> left;
  std::vector<int32_t> new_dst;
  std::vector<float> new_weight;
  for (int64_t group = 0; group < n;) {
    const int64_t u = s[order[group]];
    int64_t end = group;
    while (end < n && s[order[end]] == u) ++end;
    TORCH_CHECK(u >= 0 && u < nodes, "adjacency: an edge starts at node ", u, ", beyond the ", nodes, " nodes");
    new_dst.clear();
    new_weight.clear();
    for (int64_t k = group; k < end; ++k) {  // sorted by destination: a repeat follows its first
      const int64_t e = order[k];
      if (!new_dst.empty() && new_dst.back() == d[e]) {
        new_weight.back() = edge_weight[e];
      } else {
        new_dst.push_back(static_cast<int32_t>(d[e]));
        new_weight.push_back(edge_weight[e]);
      }
    }
    const int64_t first = start[u];
    const int64_t room = (u + 1 < nodes ? start[u + 1] : last_end) - first;
    const int64_t had = used[u];
    const int64_t adding = static_cast<int64_t>(new_dst.size());
    if (had + adding > room) {
      for (int64_t k = group; k < end; ++k) left.push_back(order[k]);
      group = end;
      continue;
    }
    // Merge from the back: the node's sorted neighbours and the new sorted ones, in place.
    int64_t a = had - 1, b = adding - 1, to = had + adding - 1;
    while (b >= 0) {
      if (a >= 0 && neighbour[first + a] > new_dst[b]) {
        neighbour[first + to] = neighbour[first + a];
        slot_weight[first + to] = slot_weight[first + a];
        --a;
      } else {
        neighbour[first + to] = new_dst[b];
        slot_weight[first + to] = new_weight[b];
        --b;
      }
      --to;
    }
    used[u] = static_cast<int32_t>(had + adding);
    group = end;
  }
  Tensor out = torch::empty({static_cast<int64_t>(left.size())}, torch::kLong);
  std::copy(left.begin(), left.end(), out.data_ptr<int64_t>());
  return out;
}

// Copies each of the first `nodes` nodes' used slots to its start in a new layout, whose unused
// slots the caller has set to weigh 0.
void relayout(Tensor indptr, Tensor fill, Tensor indices, Tensor weight, Tensor new_indptr, Tensor new_indices,
              Tensor new_weight, int64_t nodes) {
  check_layout(indptr, fill, indices, weight);
  check_layout(new_indptr, fill, new_indices, new_weight);
  const int32_t* start = indptr.data_ptr<int32_t>();
  const int32_t* used = fill.data_ptr<int32_t>();
  const int32_t* new_start = new_indptr.data_ptr<int32_t>();
  const int32_t* neighbour = indices.data_ptr<int32_t>();
  const float* slot_weight = weight.data_ptr<float>();
  int32_t* to_neighbour = new_indices.data_ptr<int32_t>();
  float* to_weight = new_weight.data_ptr<float>();
  for (int64_t u = 0; u < nodes; ++u) {
    std::copy_n(neighbour + start[u], used[u], to_neighbour + new_start[u]);
    std::copy_n(slot_weight + start[u], used[u], to_weight + new_start[u]);
  }
}

// Per node of `nodes`, the sum of its used slots' weights.
Tensor weight_sums(Tensor indptr, Tensor fill, Tensor weight, Tensor nodes) {
  TORCH_CHECK(indptr.scalar_type() == at::kInt && fill.scalar_type() == at::kInt && weight.scalar_type() == at::kFloat &&
                  indptr.is_contiguous() && fill.is_contiguous() && weight.is_contiguous(),
              "adjacency: contiguous int32 indptr and fill and float32 weights are required");
  TORCH_CHECK(nodes.scalar_type() == at::kLong && nodes.is_contiguous(), "adjacency: int64 nodes are required");
  const int32_t* start = indptr.data_ptr<int32_t>();
  const int32_t* used = fill.data_ptr<int32_t>();
  const float* slot_weight = weight.data_ptr<float>();
  const int64_t* u = nodes.data_ptr<int64_t>();
  Tensor sums = torch::zeros({nodes.numel()}, torch::kFloat);
  float* out = sums.data_ptr<float>();
  for (int64_t i = 0; i < nodes.numel(); ++i) {
    double total = 0.0;
    for (int32_t k = 0; k < used[u[i]]; ++k) total += slot_weight[start[u[i]] + k];
    out[i] = static_cast<float>(total);
  }
  return sums;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("find", &find, "slots of edges, -1 where absent (train/csrc/adjacency.cpp)");
  module.def("insert", &insert, "insert new edges into their nodes' room; returns those that did not fit");
  module.def("relayout", &relayout, "copy every node's used slots into a new layout");
  module.def("weight_sums", &weight_sums, "per node, the weight of its edges");
}
