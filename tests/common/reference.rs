//! The plain f64 reference of every op: the obvious formula, loops and all, with no blocking,
//! no chunking and no online softmax. The engine and kernels are tested against these.

/// Row-major `[m, k] · [k, n]`.
pub fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0;
            for p in 0..k {
                s += a[i * k + p] * b[p * n + j];
            }
            c[i * n + j] = s;
        }
    }
    c
}

/// Row-major transpose of `[rows, cols]`.
pub fn transpose(a: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut t = vec![0.0; a.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = a[i * cols + j];
        }
    }
    t
}

/// Elementwise `f(a, b)` with NumPy broadcasting; returns the values and the result shape.
pub fn broadcast(
    a: &[f64],
    sa: &[usize],
    b: &[f64],
    sb: &[usize],
    f: impl Fn(f64, f64) -> f64,
) -> (Vec<f64>, Vec<usize>) {
    let rank = sa.len().max(sb.len());
    let pad = |s: &[usize]| -> Vec<usize> { [vec![1; rank - s.len()], s.to_vec()].concat() };
    let (pa, pb) = (pad(sa), pad(sb));
    let shape: Vec<usize> = pa.iter().zip(&pb).map(|(&x, &y)| x.max(y)).collect();
    let n: usize = shape.iter().product();
    let index = |s: &[usize], idx: &[usize]| -> usize {
        let mut off = 0;
        for (d, &i) in s.iter().zip(idx) {
            off = off * d + if *d == 1 { 0 } else { i };
        }
        off
    };
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0; rank];
    for _ in 0..n {
        out.push(f(a[index(&pa, &idx)], b[index(&pb, &idx)]));
        for ax in (0..rank).rev() {
            idx[ax] += 1;
            if idx[ax] < shape[ax] {
                break;
            }
            idx[ax] = 0;
        }
    }
    (out, shape)
}

/// Sum over `axes` of a row-major tensor, keeping reduced axes with size 1.
pub fn sum_axes(x: &[f64], shape: &[usize], axes: &[usize]) -> (Vec<f64>, Vec<usize>) {
    let out_shape: Vec<usize> =
        shape.iter().enumerate().map(|(i, &d)| if axes.contains(&i) { 1 } else { d }).collect();
    let mut out = vec![0.0; out_shape.iter().product()];
    let mut idx = vec![0; shape.len()];
    for &v in x {
        let mut off = 0;
        for (ax, &i) in idx.iter().enumerate() {
            off = off * out_shape[ax] + if axes.contains(&ax) { 0 } else { i };
        }
        out[off] += v;
        for ax in (0..shape.len()).rev() {
            idx[ax] += 1;
            if idx[ax] < shape[ax] {
                break;
            }
            idx[ax] = 0;
        }
    }
    (out, out_shape)
}

/// LayerNorm of each row of `cols` values (biased variance).
pub fn layer_norm(x: &[f64], w: &[f64], b: &[f64], cols: usize, eps: f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(cols) {
        let mean = row.iter().sum::<f64>() / cols as f64;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / cols as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        out.extend(row.iter().enumerate().map(|(i, v)| (v - mean) * rstd * w[i] + b[i]));
    }
    out
}

/// GeLU, tanh approximation.
pub fn gelu(u: f64) -> f64 {
    0.5 * u * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (u + 0.044715 * u * u * u)).tanh())
}

/// Softmax of each row of `cols` values.
pub fn softmax(x: &[f64], cols: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(cols) {
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = row.iter().map(|v| (v - m).exp()).collect();
        let s: f64 = e.iter().sum();
        out.extend(e.iter().map(|v| v / s));
    }
    out
}

/// Causal attention over `[heads, seq, d]` with the full score matrix.
pub fn causal_attention(q: &[f64], k: &[f64], v: &[f64], heads: usize, seq: usize, d: usize) -> Vec<f64> {
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = vec![0.0; heads * seq * d];
    for h in 0..heads {
        let base = h * seq * d;
        for i in 0..seq {
            let scores: Vec<f64> = (0..=i)
                .map(|j| scale * (0..d).map(|c| q[base + i * d + c] * k[base + j * d + c]).sum::<f64>())
                .collect();
            let p = softmax(&scores, scores.len());
            for c in 0..d {
                out[base + i * d + c] = (0..=i).map(|j| p[j] * v[base + j * d + c]).sum();
            }
        }
    }
    out
}

/// Mean negative log-likelihood of `targets` under row-wise softmax of `logits`, skipping
/// rows whose target is `ignore` (0 when every row is skipped).
pub fn cross_entropy(logits: &[f64], targets: &[u32], vocab: usize, ignore: Option<u32>) -> f64 {
    let mut total = 0.0;
    let mut count = 0;
    for (row, &t) in logits.chunks(vocab).zip(targets) {
        if Some(t) == ignore {
            continue;
        }
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        total += lse - row[t as usize];
        count += 1;
    }
    if count == 0 {
        0.0
    } else {
        total / count as f64
    }
}

/// Rows of `table` (`[rows, dim]`) picked by `ids`.
pub fn embedding(table: &[f64], dim: usize, ids: &[u32]) -> Vec<f64> {
    ids.iter().flat_map(|&i| table[i as usize * dim..(i as usize + 1) * dim].to_vec()).collect()
}

/// Permutes the axes of a row-major tensor: result axis `i` is input axis `order[i]`.
pub fn permute(x: &[f64], shape: &[usize], order: &[usize]) -> Vec<f64> {
    let out_shape: Vec<usize> = order.iter().map(|&a| shape[a]).collect();
    let mut in_strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        in_strides[i] = in_strides[i + 1] * shape[i + 1];
    }
    let n: usize = shape.iter().product();
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0; shape.len()];
    for _ in 0..n {
        out.push(x[idx.iter().zip(order).map(|(&i, &a)| i * in_strides[a]).sum::<usize>()]);
        for ax in (0..out_shape.len()).rev() {
            idx[ax] += 1;
            if idx[ax] < out_shape[ax] {
                break;
            }
            idx[ax] = 0;
        }
    }
    out
}
