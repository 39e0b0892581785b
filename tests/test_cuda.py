"""The CUDA backend's own contract: built wherever nvcc is, listed with its reason where it
cannot run, device arrays of other libraries accepted in place, no silent host copies.
(Its kernels are checked against the reference by the suites parametrised over every backend.)"""

import importlib
import shutil

import numpy as np
import pytest

import fastmem as fm


def test_the_cuda_module_is_built_where_nvcc_is():
    if shutil.which("nvcc") is None:
        pytest.skip("no nvcc on this machine: fastmem._cuda is not built")
    _cuda = importlib.import_module("fastmem._cuda")
    count, why = _cuda.device_count()
    assert count > 0 or why  # no device: the runtime says why


def test_an_unavailable_cuda_raises_its_listed_reason_when_asked_for():
    info = fm.backends()["cuda"]
    if info["available"]:
        pytest.skip("cuda runs here")
    from fastmem.backends import get

    with pytest.raises(fm.BackendUnavailableError) as exc:
        get("cuda", device=True)
    assert info["reason"] and info["reason"] in str(exc.value)


def test_host_arrays_are_not_sent_to_cuda(rng):
    Q, U = rng.standard_normal((3, 4)), rng.standard_normal((5, 4))
    with pytest.raises(fm.InvalidArgumentError, match="'cuda' runs on CUDA device arrays"):
        fm.kernels.softmax_xent_grad(Q, U, [0, 1, 2], backend="cuda")


class FakeDeviceArray:
    """Claims to live on a CUDA device; never dereferenced (the checks run first)."""

    __cuda_array_interface__ = {"shape": (3, 4), "typestr": "<f8", "data": (0, False), "version": 3}


def test_a_mix_of_host_and_device_arrays_is_refused_naming_the_argument(rng):
    with pytest.raises(fm.InvalidArgumentError, match="U: expected an array on a CUDA device, like Q"):
        fm.kernels.softmax_xent_grad(FakeDeviceArray(), rng.standard_normal((5, 4)), [0, 1, 2])
    with pytest.raises(fm.InvalidArgumentError, match="W: expected an array on the host, like E"):
        fm.train_many(rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 2, 4)), FakeDeviceArray(),
                      np.full(3, 1 / 3), [0, 1, 0], 1.0, 5)


def test_host_only_entry_points_refuse_device_arrays(rng):
    with pytest.raises(fm.InvalidArgumentError, match="E: expected a host \\(numpy\\) array"):
        fm.AssociativeMemory(FakeDeviceArray(), rng.standard_normal((5, 4)))


def test_device_inputs_pick_cuda_and_only_cuda():
    from fastmem.backends import get

    with pytest.raises(fm.InvalidArgumentError, match="'cpp' runs on host arrays"):
        get("cpp", device=True)
    if not fm.backends()["cuda"]["available"]:
        with pytest.raises(fm.BackendUnavailableError, match="backend 'cuda' is unavailable"):
            get(device=True)
    else:
        assert get(device=True).name == "cuda"


@pytest.fixture
def cupy():
    info = fm.backends()["cuda"]
    if not info["available"]:
        pytest.skip(f"backend cuda unavailable: {info['reason']}")
    return importlib.import_module("cupy")


@pytest.mark.gpu
def test_device_arrays_are_not_sent_to_the_host(cupy, rng):
    Q, U = cupy.asarray(rng.standard_normal((3, 4))), cupy.asarray(rng.standard_normal((5, 4)))
    with pytest.raises(fm.InvalidArgumentError, match="inputs are on a CUDA device"):
        fm.kernels.softmax_xent_grad(Q, U, [0, 1, 2], backend="cpp")
    with pytest.raises(fm.InvalidArgumentError, match="U: expected an array on a CUDA device"):
        fm.kernels.softmax_xent_grad(Q, U.get(), [0, 1, 2])


@pytest.mark.gpu
def test_torch_gpu_tensors_are_updated_in_place(cupy, rng):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("this torch has no CUDA")
    E, U = rng.standard_normal((9, 6)), rng.standard_normal((4, 6))
    W = rng.standard_normal((6, 6))
    Wt = torch.tensor(W, device="cuda")
    ptr = Wt.data_ptr()
    loss = fm.sgd_step(Wt, torch.tensor(E, device="cuda"), torch.tensor(U, device="cuda"), [1, 1, 3], [0, 2, 3], lr=0.5)
    want = W.copy()
    want_loss = fm.sgd_step(want, E, U, [1, 1, 3], [0, 2, 3], lr=0.5, backend="numpy")
    assert Wt.data_ptr() == ptr
    np.testing.assert_allclose(Wt.cpu().numpy(), want, rtol=1e-10, atol=1e-12)
    assert loss == pytest.approx(want_loss, rel=1e-10)


@pytest.mark.gpu
def test_the_fused_kernel_streams_many_outputs(cupy, rng):
    # M = 131,072: two passes over 2,048 chunks, scores never in global memory
    b, d, M = 40, 32, 131072
    Q = rng.standard_normal((b, d)).astype(np.float32)
    U = (rng.standard_normal((M, d)) / 4).astype(np.float32)
    y = rng.integers(0, M, b)
    H, lse, _, _ = fm.kernels.softmax_xent_grad(cupy.asarray(Q), cupy.asarray(U), cupy.asarray(y))
    from fastmem.memory import _reference as ref

    lse_r, _, _, H_r = ref._fused(Q.astype(float), U.astype(float), y, np.ones(b))
    np.testing.assert_allclose(lse.get(), lse_r, rtol=1e-5)
    np.testing.assert_allclose(H.get(), H_r, atol=1e-4 * np.abs(H_r).max())
