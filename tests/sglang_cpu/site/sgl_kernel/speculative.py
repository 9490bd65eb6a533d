"""TEST-ONLY: sgl_kernel's CPU helpers of EAGLE speculative decoding, in plain PyTorch (SGLang 0.5.17 callers).

Conventions (page size 1): `req_to_token[r, j]` is the KV slot of token j of request-pool row r. A request's
draft slots for candidate c at draft step s sit at `req_to_token[r, seq_len + c * num_steps + s]`; its verify
slots at `req_to_token[r, seq_len : seq_len + N]` (N = tokens verified per request). Every output argument is
written in place, as the real kernels do; nothing is returned unless the caller uses a return value.
"""

from __future__ import annotations

import torch

from sgl_kernel.attention import check

# -- request-to-token table and cache locations ---------------------------------------------------------------


def _move_spans(name: str, req_pool_indices: torch.Tensor, req_to_token: torch.Tensor, start_offset: torch.Tensor,
                end_offset: torch.Tensor, packed: torch.Tensor, pool_len: int, into_table: bool) -> None:
    """Between row r's tokens [start, end) of the table and `packed` (every request's tokens, request after
    request): into the table (scatter) or out of it (gather)."""
    check(pool_len == req_to_token.shape[1], f"{name}: pool_len differs from req_to_token")
    offset = 0
    for row, start, end in zip(req_pool_indices.tolist(), start_offset.tolist(), end_offset.tolist(), strict=True):
        count = max(end - start, 0)
        check(offset + count <= packed.numel(), f"{name}: out_cache_loc too short")
        if into_table:
            req_to_token[row, start:end] = packed[offset : offset + count].to(req_to_token.dtype)
        else:
            packed[offset : offset + count] = req_to_token[row, start:end].to(packed.dtype)
        offset += count


def assign_req_to_token_pool_cpu(req_pool_indices: torch.Tensor, req_to_token: torch.Tensor,
                                 start_offset: torch.Tensor, end_offset: torch.Tensor, out_cache_loc: torch.Tensor,
                                 pool_len: int) -> None:
    """Scatter: row r's tokens [start, end) get the next slots of `out_cache_loc`, request after request."""
    _move_spans("assign_req_to_token_pool", req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc,
                pool_len, into_table=True)


def assign_extend_cache_locs_cpu(req_pool_indices: torch.Tensor, req_to_token: torch.Tensor,
                                 start_offset: torch.Tensor, end_offset: torch.Tensor, out_cache_loc: torch.Tensor,
                                 pool_len: int) -> None:
    """Gather: the slots of row r's tokens [start, end), request after request; the rest of the output stays."""
    _move_spans("assign_extend_cache_locs", req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc,
                pool_len, into_table=False)


def assign_draft_cache_locs_contiguous_cpu(req_pool_indices: torch.Tensor, req_to_token: torch.Tensor,
                                           seq_lens: torch.Tensor, out_cache_loc: torch.Tensor, pool_len: int,
                                           topk: int, num_steps: int) -> None:
    """The topk * num_steps draft slots of each request, in (request, candidate, step) order."""
    width = topk * num_steps
    check(out_cache_loc.numel() == seq_lens.numel() * width, "assign_draft_cache_locs: out_cache_loc size")
    for i, (row, length) in enumerate(zip(req_pool_indices.tolist(), seq_lens.tolist(), strict=True)):
        out_cache_loc[i * width : (i + 1) * width] = req_to_token[row, length : length + width].to(out_cache_loc.dtype)


def build_draft_decode_metadata_cpu(req_to_token: torch.Tensor, req_pool_indices: torch.Tensor,
                                    seq_lens: torch.Tensor, topk: int, num_steps: int, pool_len: int) -> torch.Tensor:
    """A request-to-token table with one row per draft candidate (request b, candidate c at row b * topk + c):
    the request's committed prefix, then that candidate's num_steps draft slots. Columns past them are 0."""
    out = torch.zeros(seq_lens.numel() * topk, pool_len, dtype=req_to_token.dtype)
    for b, (row, length) in enumerate(zip(req_pool_indices.tolist(), seq_lens.tolist(), strict=True)):
        tokens = req_to_token[row]
        for c in range(topk):
            out[b * topk + c, :length] = tokens[:length]
            draft = length + c * num_steps
            out[b * topk + c, length : length + num_steps] = tokens[draft : draft + num_steps]
    return out


def fill_bonus_tokens_cpu(accept_tokens: torch.Tensor, accept_lens: torch.Tensor, bonus_tokens: torch.Tensor,
                          accept_stride: int) -> None:
    """The last accepted token of each request (its bonus token): accept_tokens[b, accept_lens[b] - 1]."""
    flat = accept_tokens.reshape(-1)
    check(flat.numel() == accept_lens.numel() * accept_stride, "fill_bonus_tokens: accept_tokens size")
    for b, length in enumerate(accept_lens.tolist()):
        bonus_tokens[b] = flat[b * accept_stride + length - 1]


def fill_accept_out_cache_loc_cpu(accept_index: torch.Tensor, out_cache_loc: torch.Tensor,
                                  accept_out_cache_loc: torch.Tensor, size: int | None = None) -> None:
    """The cache slots of the accepted tokens, packed: out_cache_loc[i] for each accept_index entry i != -1 in
    row-major order. (0.5.17 calls this with 3 arguments; `size` matters only to the Triton version.)"""
    accepted = accept_index.reshape(-1)
    accepted = accepted[accepted > -1].long()
    check(accept_out_cache_loc.numel() >= accept_index.numel(), "fill_accept_out_cache_loc: output too short")
    accept_out_cache_loc[: accepted.numel()] = out_cache_loc[accepted]


# -- tree build and greedy verification -----------------------------------------------------------------------


def _tree_parents(selected: list[int], parent_list: list[int], topk: int) -> list[int]:
    """Parent node of each tree node 1..N-1 (node 0, the root, is the last verified token; -1 marks a node whose
    parent was not selected, which SGLang's kernels report as an invalid tree and leave unlinked).

    Node k + 1 is the draft of score-list id selected[k]; that id's parent is the root when id // topk == 0,
    else the node holding score-list id parent_list[id // topk]."""
    node_of = {score_id: k + 1 for k, score_id in enumerate(selected)}
    parents = [-1]
    for score_id in selected:
        parent_slot = score_id // topk
        parents.append(0 if parent_slot == 0 else node_of.get(parent_list[parent_slot], -1))
    return parents


def build_tree_kernel_efficient_cpu(parent_list: torch.Tensor, selected_index: torch.Tensor,
                                    verified_seq_len: torch.Tensor, tree_mask: torch.Tensor, positions: torch.Tensor,
                                    retrive_index: torch.Tensor, retrive_next_token: torch.Tensor,
                                    retrive_next_sibling: torch.Tensor, topk: int, depth: int, draft_token_num: int,
                                    tree_mask_mode: int) -> None:
    """Links, attention mask and positions of each request's draft tree of N = draft_token_num nodes.

    * retrive_index[b, i] = b * N + i (the node's row in the flattened batch);
    * retrive_next_token[b, i] = first child of node i, retrive_next_sibling[b, i] = its next sibling (children
      in ascending node order), -1 for none (the caller pre-fills -1);
    * tree_mask (QLEN_ONLY layout, [bs * N * N]): node i sees node j iff j is the root, i itself or an ancestor;
    * positions[b * N + i] = seq_len + depth of node i (the root is at seq_len)."""
    check(tree_mask_mode == 1, f"build_tree: only tree_mask_mode 1 (QLEN_ONLY, SGLang's CPU default) is "
          f"implemented, got {tree_mask_mode}")
    n = draft_token_num
    check(tree_mask.numel() == verified_seq_len.numel() * n * n, "build_tree: tree_mask size")
    masks = tree_mask.view(-1, n, n)
    for b, seq_len in enumerate(verified_seq_len.tolist()):
        parents = _tree_parents(selected_index[b].tolist(), parent_list[b].tolist(), topk)
        retrive_index[b] = torch.arange(b * n, (b + 1) * n)
        for node in range(n - 1, 0, -1):  # descending, so that each list of children ends up ascending
            parent = parents[node]
            if parent < 0:
                continue
            retrive_next_sibling[b, node] = retrive_next_token[b, parent]
            retrive_next_token[b, parent] = node
        masks[b] = False
        masks[b, :, 0] = True
        positions[b * n] = seq_len
        for node in range(1, n):
            ancestor, node_depth = node, 0
            while ancestor > 0 and node_depth < depth:
                masks[b, node, ancestor] = True
                node_depth += 1
                ancestor = parents[ancestor]
            positions[b * n + node] = seq_len + node_depth


def verify_tree_greedy_cpu(predicts: torch.Tensor, accept_index: torch.Tensor, accept_token_num: torch.Tensor,
                           candidates: torch.Tensor, retrive_index: torch.Tensor, retrive_next_token: torch.Tensor,
                           retrive_next_sibling: torch.Tensor, target_predict: torch.Tensor) -> None:
    """Greedy tree verification. From the root, repeatedly descend into the first child (in sibling order) whose
    draft token equals the target's argmax at the current node; stop when none does or the depth is used up.

    accept_index[b] = flattened rows of the accepted path (root first, -1 after); accept_token_num[b] = drafts
    accepted (root excluded); predicts[row] = the target's token at each accepted row (the last one is the
    bonus token)."""
    target = target_predict.reshape(-1)
    max_depth = accept_index.shape[1]
    for b in range(candidates.shape[0]):
        tokens, rows = candidates[b].tolist(), retrive_index[b].tolist()
        first_child, next_sibling = retrive_next_token[b].tolist(), retrive_next_sibling[b].tolist()
        node, accepted = 0, 0
        accept_index[b, 0] = rows[0]
        for _ in range(1, max_depth):
            want = int(target[rows[node]])
            child = first_child[node]
            while child != -1 and tokens[child] != want:
                child = next_sibling[child]
            if child == -1:
                break
            predicts[rows[node]] = want
            accepted += 1
            accept_index[b, accepted] = rows[child]
            node = child
        accept_token_num[b] = accepted
        predicts[rows[node]] = target[rows[node]]
