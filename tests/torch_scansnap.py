"""A plain PyTorch port of the authors' Model2 (facebookresearch/luckmatters,
ssl/real-dataset/decoder_only.py) as docs/scansnap.md states it: one-hot tokens, autograd,
two torch optimizers. For tests and the peer benchmark only: the independent check of the
histogram kernels."""

import torch
import torch.nn.functional as F


class Model2(torch.nn.Module):
    def __init__(self, M, Y, Z, dtype=torch.float64):
        super().__init__()
        self.M = M
        self.K1 = torch.nn.Linear(M, M, bias=False).to(dtype)  # the decoder Y
        self.K2 = torch.nn.Linear(M, M, bias=False).to(dtype)  # the attention logits Z
        with torch.no_grad():
            self.K1.weight.copy_(torch.as_tensor(Y))
            self.K2.weight.copy_(torch.as_tensor(Z))

    def forward(self, tokens):
        X = F.one_hot(tokens, self.M).to(self.K1.weight.dtype)  # batch x L x M
        X_key, X_query = X[:, :-1], X[:, -1]
        keys = self.K2(X_key)                                    # column x_t of K2.weight
        scores = (keys * X_query[:, None, :]).sum(-1)            # K2.weight[m, x_t]
        b = torch.softmax(scores, dim=1)                         # over the context only
        f = F.normalize((X_key * b[..., None]).sum(1), dim=1)    # X^T b / |X^T b|
        return self.K1(f)


def optimizers(model, lr_y, lr_z, optimizer="sgd", momentum=0.9, betas=(0.9, 0.999), eps=1e-8):
    if optimizer == "sgd":
        return [torch.optim.SGD([model.K1.weight], lr=lr_y, momentum=momentum),
                torch.optim.SGD([model.K2.weight], lr=lr_z, momentum=momentum)]
    return [torch.optim.Adam([model.K1.weight], lr=lr_y, betas=betas, eps=eps),
            torch.optim.Adam([model.K2.weight], lr=lr_z, betas=betas, eps=eps)]


def train(model, opts, batches):
    """One step per (tokens, target) batch; the loss of each before its update."""
    losses = []
    for tokens, target in batches:
        for o in opts:
            o.zero_grad()
        loss = F.cross_entropy(model(torch.as_tensor(tokens)), torch.as_tensor(target))
        loss.backward()
        for o in opts:
            o.step()
        losses.append(loss.item())
    return losses
