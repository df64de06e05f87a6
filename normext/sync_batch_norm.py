"""SyncBatchNorm: BatchNorm whose training statistics span every process of a group.

Each process computes per-channel (count, mean, M2) of its part of the batch with
normext::batch_norm_stats; the triples are all-gathered (in float64) and merged with Chan's
formula in rank order, so every process gets the same, exact statistics. The backward all-reduces
the per-channel sums of dy and dy * (x - mean) and applies the input gradient locally. Parameter
gradients stay local, as in torch (DDP averages them).
"""
import torch
import torch.distributed as dist
from torch import Tensor, nn

from normext import functional as F
from normext._meta import acc_dtype

_stats = torch.ops.normext.batch_norm_stats.default
_elemt = torch.ops.normext.batch_norm_elemt.default
_backward_reduce = torch.ops.normext.batch_norm_backward_reduce.default
_backward_elemt = torch.ops.normext.batch_norm_backward_elemt.default


def _all_gather(t: Tensor, process_group, world_size: int) -> Tensor:
    if process_group._get_backend_name() != "gloo":
        out = t.new_empty((world_size, t.numel()))
        dist.all_gather_into_tensor(out, t, process_group)
        return out
    parts = [torch.empty_like(t) for _ in range(world_size)]
    dist.all_gather(parts, t, process_group)
    return torch.stack(parts)


def merge_stats(gathered: Tensor, num_channels: int):
    """Chan merge, in row (rank) order, of rows [mean C | M2 C | count] (float64): returns the
    global (count, mean, M2). Processes with an empty batch are skipped."""
    counts = gathered[:, 2 * num_channels].tolist()
    count, mean, m2 = 0.0, None, None
    for r, n in enumerate(counts):
        if n < 1:
            continue
        mean_r = gathered[r, :num_channels]
        m2_r = gathered[r, num_channels:2 * num_channels]
        if mean is None:
            count, mean, m2 = n, mean_r.clone(), m2_r.clone()
            continue
        total = count + n
        delta = mean_r - mean
        mean = mean + delta * (n / total)
        m2 = m2 + m2_r + delta * delta * (count * n / total)
        count = total
    return count, mean, m2


class _SyncBatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, bias, running_mean, running_var, eps, momentum, process_group,
                world_size):
        if not (input.is_contiguous(memory_format=torch.channels_last)
                or input.is_contiguous(memory_format=torch.channels_last_3d)):
            input = input.contiguous()
        if weight is not None:
            weight = weight.contiguous()
        size = int(input.numel() // input.size(1))
        if size == 1 and world_size < 2:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {size}"
            )
        C = input.shape[1]
        local_mean, local_m2 = _stats(input)
        local = torch.cat([local_mean.double(), local_m2.double(),
                           local_mean.new_full((1,), float(size), dtype=torch.float64)])
        count, mean, m2 = merge_stats(_all_gather(local, process_group, world_size), C)
        if mean is None:  # every process had an empty batch
            mean = m2 = torch.zeros(C, dtype=torch.float64, device=input.device)
        acc = acc_dtype(input.dtype)
        var = (m2 / max(count, 1)).clamp_min(0)
        invstd = (var + eps).rsqrt()
        with torch.no_grad():
            if running_mean is not None and count > 0:
                running_mean.copy_(running_mean.double() * (1 - momentum) + mean * momentum)
            if running_var is not None and count > 0:
                unbiased = m2 / (count - 1) if count > 1 else m2 / 0.0
                running_var.copy_(running_var.double() * (1 - momentum) + unbiased * momentum)
        mean, invstd = mean.to(acc), invstd.to(acc)
        ctx.save_for_backward(input, weight, mean, invstd)
        ctx.process_group = process_group
        ctx.count = int(count)
        return _elemt(input, weight, bias, mean, invstd)

    @staticmethod
    def backward(ctx, grad_output):
        if not (grad_output.is_contiguous(memory_format=torch.channels_last)
                or grad_output.is_contiguous(memory_format=torch.channels_last_3d)):
            grad_output = grad_output.contiguous()
        input, weight, mean, invstd = ctx.saved_tensors
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        sum_dy, sum_dy_xmu = _backward_reduce(grad_output, input, mean)
        grad_input = grad_weight = grad_bias = None
        if weight is not None and need_weight:
            grad_weight = (sum_dy_xmu * invstd).to(weight.dtype)
        if weight is not None and need_bias:
            grad_bias = sum_dy.to(weight.dtype)
        if need_input:
            C = sum_dy.shape[0]
            combined = torch.cat([sum_dy, sum_dy_xmu])
            dist.all_reduce(combined, dist.ReduceOp.SUM, ctx.process_group)
            sum_dy, sum_dy_xmu = torch.split(combined, C)
            if input.numel() > 0:
                grad_input = _backward_elemt(grad_output, input, weight, mean, invstd, sum_dy,
                                             sum_dy_xmu, ctx.count)
            else:
                grad_input = torch.empty_like(input)
        return grad_input, grad_weight, grad_bias, None, None, None, None, None, None


class SyncBatchNorm(nn.SyncBatchNorm):
    """torch.nn.SyncBatchNorm on normext kernels: same arguments, state_dict and repr; falls back
    to (normext) batch_norm in eval, without an initialized process group, or in a group of one.

    Unlike torch's, it also synchronizes CPU tensors (gloo).
    """

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)
        if self.momentum is None:
            exponential_average_factor = 0.0
        else:
            exponential_average_factor = self.momentum
        if self.training and self.track_running_stats:
            if self.num_batches_tracked is None:
                raise AssertionError("num_batches_tracked must not be None")
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                exponential_average_factor = 1.0 / self.num_batches_tracked.item()
            else:
                exponential_average_factor = self.momentum
        if self.training:
            bn_training = True
        else:
            bn_training = (self.running_mean is None) and (self.running_var is None)
        running_mean = self.running_mean if not self.training or self.track_running_stats else None
        running_var = self.running_var if not self.training or self.track_running_stats else None
        need_sync = bn_training and self.training and dist.is_available() and dist.is_initialized()
        if need_sync:
            process_group = self.process_group or dist.group.WORLD
            world_size = dist.get_world_size(process_group)
            need_sync = world_size > 1
        if not need_sync:
            return F.batch_norm(input, running_mean, running_var, self.weight, self.bias,
                                bn_training, exponential_average_factor, self.eps)
        return _SyncBatchNormFunction.apply(input, self.weight, self.bias, running_mean,
                                            running_var, self.eps, exponential_average_factor,
                                            process_group, world_size)

    @classmethod
    def convert_sync_batchnorm(cls, module, process_group=None):
        """As torch.nn.SyncBatchNorm.convert_sync_batchnorm, producing normext.SyncBatchNorm."""
        module_output = module
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            # NB: `bias` only when it is off with affine on: torch before 2.14 has no such argument.
            no_bias = {"bias": False} if module.affine and module.bias is None else {}
            module_output = cls(
                module.num_features,
                module.eps,
                module.momentum,
                module.affine,
                module.track_running_stats,
                process_group,
                **no_bias,
            )
            if module.affine:
                with torch.no_grad():
                    module_output.weight = module.weight
                    module_output.bias = module.bias
            module_output.running_mean = module.running_mean
            module_output.running_var = module.running_var
            module_output.num_batches_tracked = module.num_batches_tracked
            module_output.training = module.training
            if hasattr(module, "qconfig"):
                module_output.qconfig = module.qconfig
        for name, child in module.named_children():
            module_output.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        del module
        return module_output
