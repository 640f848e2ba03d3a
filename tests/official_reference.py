"""An independent, deliberately plain re-implementation of the release's forward pass (VSE∞-style
modules, per-sample loops), used only to check that converted checkpoints give the same embeddings."""

import math

import torch
import torch.nn as nn


def l2norm(x, dim):
    return x / (torch.pow(x, 2).sum(dim=dim, keepdim=True).sqrt() + 1e-8)


class RefGPO(nn.Module):
    def __init__(self, d_pe=32, d_hidden=32):
        super().__init__()
        self.d_pe = d_pe
        self.gru = nn.GRU(d_pe, d_hidden, 1, batch_first=True, bidirectional=True)
        self.linear = nn.Linear(d_hidden, 1, bias=False)

    def pe(self, length):
        pe = torch.zeros(length, self.d_pe)
        for pos in range(length):
            for i in range(0, self.d_pe, 2):
                angle = pos / (10000 ** (i / self.d_pe))
                pe[pos, i], pe[pos, i + 1] = math.sin(angle), math.cos(angle)
        return pe

    def forward(self, features, lengths):
        pooled = []
        for feat, n in zip(features, lengths.tolist()):  # one sequence at a time: no packing needed
            out, _ = self.gru(self.pe(n).unsqueeze(0))
            h = out.size(2) // 2
            scores = self.linear((out[..., :h] + out[..., h:]) / 2)[0, :, 0]
            weights = torch.softmax(scores / 0.1, 0)
            ordered = feat[:n].sort(dim=0, descending=True)[0]
            pooled.append((weights.unsqueeze(1) * ordered).sum(0))
        return torch.stack(pooled)


class RefMLP(nn.Module):
    def __init__(self, d_in, d_hidden, d_out):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(d_in, d_hidden), nn.Linear(d_hidden, d_out)])
        self.bns = nn.ModuleList([nn.BatchNorm1d(d_hidden), nn.BatchNorm1d(d_out)])

    def forward(self, x):
        b, n, d = x.shape
        x = torch.relu(self.bns[0](self.layers[0](x.reshape(b * n, d))))
        return self.layers[1](x).reshape(b, n, -1)


class RefVisualSA(nn.Module):
    def __init__(self, d, n_regions):
        super().__init__()
        self.embedding_local = nn.Sequential(nn.Linear(d, d), nn.BatchNorm1d(n_regions), nn.Tanh(), nn.Dropout(0.4))
        self.embedding_global = nn.Sequential(nn.Linear(d, d), nn.BatchNorm1d(d), nn.Tanh(), nn.Dropout(0.4))
        self.embedding_common = nn.Sequential(nn.Linear(d, 1))

    def forward(self, local, raw_global):
        l_emb = self.embedding_local(local)
        g_emb = self.embedding_global(raw_global).unsqueeze(1).repeat(1, l_emb.size(1), 1)
        weights = torch.softmax(self.embedding_common(l_emb * g_emb).squeeze(2), dim=1)
        return l2norm((weights.unsqueeze(2) * local).sum(1), dim=-1)


class RefImageEncoder(nn.Module):
    def __init__(self, d, e, n_regions):
        super().__init__()
        self.fc = nn.Linear(d, e)
        self.mlp = RefMLP(d, e // 2, e)
        self.gpool = RefGPO()
        self.v_sa = RefVisualSA(d, n_regions)

    def forward(self, images, lengths):
        g = self.v_sa(images, images.mean(1))
        att = torch.softmax(torch.bmm(images, g.unsqueeze(2)).squeeze(2), dim=1)
        att = l2norm(att, dim=1)
        images = images + att.unsqueeze(2) * g.unsqueeze(1)
        features = self.fc(images) + self.mlp(images)
        return l2norm(self.gpool(features, lengths), dim=-1)


class RefTextEncoder(nn.Module):
    def __init__(self, bert, e):
        super().__init__()
        self.bert = bert
        self.linear = nn.Linear(bert.config.hidden_size, e)
        self.gpool = RefGPO()

    def forward(self, ids, lengths):
        hidden = self.bert(ids, (ids != 0).float())[0]
        return l2norm(self.gpool(self.linear(hidden), lengths), dim=-1)
