// The trainer's compiled helpers: one intra-view skip-gram step of M2GRL, fused (the loss, its
// gradients and the row-wise Adagrad update of the touched rows, without an autograd graph or a
// (batch x dim) temporary per broadcast), and the in-place shuffle of a round's pairs (or of its
// alignment tasks' items alone).
//
// The step is the mathematics of sgns_loss + RowBatch in train/model.py (a test holds the two
// together). It runs as one OpenMP parallel region: each thread takes a slice of the batch through
// the products and the per-row gradients, then, after one barrier, updates the rows it owns. On two
// cores a fork and join per operation (a dozen per step) cost as much as the arithmetic.
#include <torch/extension.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <exception>
#include <vector>

using at::Tensor;

namespace {

// Rows are read in random order from tables larger than the cache: asking for a row this many
// iterations before it is used overlaps the memory waits instead of paying them one by one.
constexpr int64_t kPrefetchAhead = 8;

inline void prefetch_row(const float* row, int64_t d) {
  for (int64_t j = 0; j < d; j += 16) __builtin_prefetch(row + j);
}

// Eight running sums: with one, every add waits for the previous one (the compiler may not reorder
// float additions); eight independent ones let it use vector registers.
inline float dot(const float* a, const float* b, int64_t d) {
  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  int64_t j = 0;
  for (; j + 8 <= d; j += 8)
    for (int k = 0; k < 8; ++k) acc[k] += a[j + k] * b[j + k];
  float sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; j < d; ++j) sum += a[j] * b[j];
  return sum;
}

// Row-wise Adagrad over the rows this thread owns (index % owners == owner), as RowBatch.apply:
// each row's gradient is scaled by the pair count, its mean square added to the row's accumulator,
// and the row moved by lr / sqrt(accumulator). A row listed twice accumulates both squares before
// either move. Owning rows by index means no two threads write one row, whatever the timing.
void adagrad_owned(float* weight, float* square, const int64_t* index, const float* grad, int64_t n, int64_t d,
                   float pairs, float lr, int owner, int owners) {
  const float to_mean_square = pairs * pairs / d;
  for (int64_t i = 0; i < n; ++i)
    if (index[i] % owners == owner) square[index[i]] += dot(grad + i * d, grad + i * d, d) * to_mean_square;
  for (int64_t i = 0; i < n; ++i) {
    if (i + kPrefetchAhead < n && index[i + kPrefetchAhead] % owners == owner)
      prefetch_row(weight + index[i + kPrefetchAhead] * d, d);
    if (index[i] % owners != owner) continue;
    const float step = -lr * pairs / (std::sqrt(square[index[i]]) + 1e-9f);
    float* row = weight + index[i] * d;
    const float* g = grad + i * d;
    for (int64_t j = 0; j < d; ++j) row[j] += step * g[j];
  }
}

void check_table(const Tensor& weight, const Tensor& square, const char* name) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kFloat && weight.is_contiguous(),
              name, " weight: a contiguous float32 matrix is required");
  TORCH_CHECK(square.dim() == 1 && square.scalar_type() == at::kFloat && square.is_contiguous() &&
                  square.size(0) == weight.size(0),
              name, " accumulator: one contiguous float32 per row is required");
}

void check_index(const Tensor& index, int64_t rows, const char* name) {
  TORCH_CHECK(index.dim() == 1 && index.scalar_type() == at::kLong && index.is_contiguous(),
              name, ": a contiguous int64 vector is required");
  // One pass over the indices, without the two reductions and temporaries of min() and max().
  const int64_t* row = index.data_ptr<int64_t>();
  for (int64_t i = 0, n = index.numel(); i < n; ++i) {
    TORCH_CHECK(row[i] >= 0 && row[i] < rows, name, ": row ", row[i], " out of range [0, ", rows, ")");
  }
}

// splitmix64: a small, fast generator; the shuffle needs speed and a seed, not cryptography.
inline uint64_t next_random(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

}  // namespace

// Returns the loss: the mean over the first `loss_sample` pairs (the batch is shuffled) of
// -log sigmoid(u.v) plus `scale` x the sum over the pool of -log sigmoid(-u.p). The rows
// move by the gradient of `weight` x that loss (the task's weight in the uncertainty-weighted total).
double sgns_step(Tensor input_weight, Tensor input_square, Tensor context_weight, Tensor context_square,
                 Tensor centers, Tensor contexts, Tensor pool, double scale, double weight, double lr,
                 int64_t loss_sample) {
  at::NoGradGuard no_grad;
  check_table(input_weight, input_square, "input table");
  check_table(context_weight, context_square, "context table");
  TORCH_CHECK(input_weight.size(1) == context_weight.size(1), "input and context tables differ in width");
  check_index(centers, input_weight.size(0), "centers");
  check_index(contexts, context_weight.size(0), "contexts");
  check_index(pool, context_weight.size(0), "pool");
  TORCH_CHECK(centers.numel() == contexts.numel() && centers.numel() > 0, "centers and contexts: one per pair");
  TORCH_CHECK(pool.numel() > 0, "pool: at least one negative");

  const int64_t n = centers.numel(), d = input_weight.size(1), k = pool.numel();
  const int64_t sample = std::min(loss_sample, n);
  const float per_pair = weight / n, pairs = static_cast<float>(n), rate = lr;
  const int threads = std::max(1, std::min<int>(at::get_num_threads(), static_cast<int>(n)));

  Tensor pool_rows = context_weight.index_select(0, pool);
  Tensor center_rows = at::empty({n, d}, input_weight.options());
  Tensor scores = at::empty({n, k}, input_weight.options());  // becomes the negatives' push
  Tensor center_grad = at::empty({n, d}, input_weight.options());
  Tensor context_grad = at::empty({n, d}, input_weight.options());
  Tensor pool_grads = at::zeros({threads, k, d}, input_weight.options());  // slots of absent threads stay 0
  std::vector<double> positive_loss(threads, 0.0), negative_loss(threads, 0.0);

  const int64_t* center_index = centers.data_ptr<int64_t>();
  const int64_t* context_index = contexts.data_ptr<int64_t>();
  float* inputs = input_weight.data_ptr<float>();
  float* context_table = context_weight.data_ptr<float>();
  std::exception_ptr failure;

#pragma omp parallel num_threads(threads)
  {
    // The runtime may grant fewer threads than asked (inside another parallel region, one): the
    // batch and the rows are split among those that came, never among those asked for.
    const int t = omp_get_thread_num(), team = omp_get_num_threads();
    try {
      const int64_t lo = n * t / team, hi = n * (t + 1) / team, rows = hi - lo;
      float* u = center_rows.data_ptr<float>();
      for (int64_t i = lo; i < hi; ++i) {
        if (i + kPrefetchAhead < hi) prefetch_row(inputs + center_index[i + kPrefetchAhead] * d, d);
        std::copy_n(inputs + center_index[i] * d, d, u + i * d);
      }
      // ATen operators called inside a parallel region run on the calling thread alone.
      Tensor my_rows = center_rows.narrow(0, lo, rows);
      Tensor push = scores.narrow(0, lo, rows);
      at::mm_out(push, my_rows, pool_rows.t());
      if (lo < sample) negative_loss[t] = at::softplus(push.narrow(0, 0, std::min(hi, sample) - lo)).sum().item<double>();
      push.sigmoid_().mul_(scale * per_pair);

      Tensor my_center_grad = center_grad.narrow(0, lo, rows), my_pool_grad = pool_grads[t];
      at::mm_out(my_center_grad, push, pool_rows);
      at::mm_out(my_pool_grad, push.t(), my_rows);
      // The positives in one pass over their context rows: score, pull, both gradients.
      float* to_center = center_grad.data_ptr<float>();
      float* to_context = context_grad.data_ptr<float>();
      double loss = 0.0;
      for (int64_t i = lo; i < hi; ++i) {
        if (i + kPrefetchAhead < hi) prefetch_row(context_table + context_index[i + kPrefetchAhead] * d, d);
        const float* v = context_table + context_index[i] * d;
        const float score = dot(u + i * d, v, d);
        const float tail = std::exp(-std::fabs(score));  // in (0, 1]: no overflow either side
        const float miss = score >= 0.f ? tail / (1.f + tail) : 1.f / (1.f + tail);  // 1 - sigmoid(score)
        if (i < sample) loss += std::log1p(tail) + std::max(-score, 0.f);  // softplus(-score)
        const float pull = -miss * per_pair;
        for (int64_t j = 0; j < d; ++j) {
          to_center[i * d + j] += pull * v[j];
          to_context[i * d + j] = pull * u[i * d + j];
        }
      }
      positive_loss[t] = loss;
    } catch (...) {
#pragma omp critical
      failure = std::current_exception();
    }
    // Every gradient is computed from the rows as they were before the step; only now do rows move.
#pragma omp barrier
    if (!failure) {
      adagrad_owned(inputs, input_square.data_ptr<float>(), center_index, center_grad.data_ptr<float>(), n, d, pairs,
                    rate, t, team);
      adagrad_owned(context_table, context_square.data_ptr<float>(), context_index, context_grad.data_ptr<float>(), n,
                    d, pairs, rate, t, team);
    }
  }
  if (failure) std::rethrow_exception(failure);

  // The pool's rows after the context rows, as RowBatch applies them: a row can be in both.
  Tensor pool_grad = pool_grads.sum(0);
  adagrad_owned(context_table, context_square.data_ptr<float>(), pool.data_ptr<int64_t>(), pool_grad.data_ptr<float>(),
                k, d, pairs, rate, 0, 1);
  double positive_sum = 0.0, negative_sum = 0.0;
  for (int t = 0; t < threads; ++t) {
    positive_sum += positive_loss[t];
    negative_sum += negative_loss[t];
  }
  return (positive_sum + scale * negative_sum) / sample;
}

// Fisher-Yates over one vector, or over two equal-length ones at once (b not null: a pair stays a
// pair), in place, seeded: one seed gives one permutation either way.
template <typename Index>
void shuffle_in_place(Index* a, Index* b, int64_t n, uint64_t state) {
  for (int64_t j = n - 1; j > 0; --j) {
    const auto r = static_cast<int64_t>((static_cast<unsigned __int128>(next_random(state)) * (j + 1)) >> 64);
    std::swap(a[j], a[r]);
    if (b != nullptr) std::swap(b[j], b[r]);
  }
}

void check_shuffled(const Tensor& rows, const char* name) {
  TORCH_CHECK(rows.dim() == 1 && (rows.scalar_type() == at::kLong || rows.scalar_type() == at::kInt) &&
                  rows.is_contiguous(), name, ": a contiguous int64 or int32 vector is required");
}

template <typename Index>
void shuffle_typed(Tensor& left, Tensor* right, uint64_t seed) {
  shuffle_in_place(left.data_ptr<Index>(), right != nullptr ? right->data_ptr<Index>() : nullptr, left.numel(), seed);
}

void shuffle_pairs(Tensor left, Tensor right, int64_t seed) {
  check_shuffled(left, "shuffle_pairs");
  check_shuffled(right, "shuffle_pairs");
  TORCH_CHECK(left.numel() == right.numel() && left.scalar_type() == right.scalar_type(),
              "shuffle_pairs: two vectors of one length and type are required");
  if (left.scalar_type() == at::kLong) shuffle_typed<int64_t>(left, &right, static_cast<uint64_t>(seed));
  else shuffle_typed<int32_t>(left, &right, static_cast<uint64_t>(seed));
}

void shuffle_rows(Tensor rows, int64_t seed) {
  check_shuffled(rows, "shuffle_rows");
  if (rows.scalar_type() == at::kLong) shuffle_typed<int64_t>(rows, nullptr, static_cast<uint64_t>(seed));
  else shuffle_typed<int32_t>(rows, nullptr, static_cast<uint64_t>(seed));
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("sgns_step", &sgns_step, "one fused skip-gram step with row-wise Adagrad (train/csrc/sgns_step.cpp)");
  module.def("shuffle_pairs", &shuffle_pairs, "shuffle two vectors by one permutation, in place");
  module.def("shuffle_rows", &shuffle_rows, "shuffle one vector in place, by the permutation shuffle_pairs takes");
}
