"""One full-batch GD step (fused scores, softmax, cross-entropy, gradient, update)."""

from .common import BACKENDS, NO_RECORD, gaussian_problem, median_seconds, require, sgemm_seconds

import fastmem as fm


class GDStep:
    params = ([(512, 512, 512), (2048, 2048, 2048), (4096, 4096, 256), (4096, 131072, 256)], BACKENDS)
    param_names = ["N, M, d", "backend"]
    timeout = 300

    def setup(self, shape, backend):
        require(backend)
        N, M, d = shape
        if backend == "numpy" and N * M * d > 2048**3:
            raise NotImplementedError("the float64 reference is too slow at this size")
        self.mem, self.task = gaussian_problem(N, M, d)
        self.flops = 4 * N * d * d + 4 * N * M * d
        self.backend = backend
        self.step()

    def step(self):
        fm.train(self.mem, self.task, fm.SGD(lr=0.1), 1, record=NO_RECORD, backend=self.backend)

    def time_gd_step(self, shape, backend):
        self.step()

    def track_gflops(self, shape, backend):
        return self.flops / median_seconds(self.step, 3) / 1e9

    track_gflops.unit = "GFLOP/s"

    def track_ratio_to_sgemm(self, shape, backend):
        """The step's FLOP/s over a plain sgemm's of the same size (1.0: as fast as BLAS)."""
        N, M, d = shape
        sgemm = 2 * N * d * max(d, M) / sgemm_seconds(N, max(d, M), d, 3)
        return self.flops / median_seconds(self.step, 3) / sgemm

    track_ratio_to_sgemm.unit = "ratio"


class LargeMMemory:
    """Peak memory of a GD step: the score block is streamed, so it does not grow with M."""

    params = ([4096, 131072], ["cpp", "numba"])
    param_names = ["M", "backend"]
    timeout = 300

    def setup(self, M, backend):
        require(backend)
        self.mem, self.task = gaussian_problem(4096, M, 256)
        self.backend = backend

    def peakmem_gd_step(self, M, backend):
        fm.train(self.mem, self.task, fm.SGD(lr=0.1), 1, record=NO_RECORD, backend=self.backend)


class SoftmaxXentGrad:
    params = ([(16, 5, 100), (1024, 4096, 256), (256, 65537, 64)], BACKENDS)
    param_names = ["b, M, d", "backend"]

    def setup(self, shape, backend):
        require(backend)
        b, M, d = shape
        mem, _ = gaussian_problem(b, M, d)
        self.args = (mem.E, mem.U, [i % M for i in range(b)])
        self.backend = backend

    def time_softmax_xent_grad(self, shape, backend):
        fm.kernels.softmax_xent_grad(*self.args, backend=self.backend)

    def track_tokens_per_second(self, shape, backend):
        b = shape[0]
        return b / median_seconds(lambda: fm.kernels.softmax_xent_grad(*self.args, backend=self.backend), 3)

    track_tokens_per_second.unit = "tokens/s"
