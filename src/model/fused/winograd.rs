//! 3x3 stride-1 convolutions by Winograd's minimal filtering, F(2x2, 3x3) (Lavin & Gray, 2015).
//!
//! Each 2x2 block of output pixels comes from a 4x4 input tile: the tile and the kernel are
//! taken into a 4x4 transform domain where the convolution is an element-wise product, which
//! summed over input channels is 16 independent matrix products, `[tiles, cin] x [cin, cout]`.
//! That is 16 multiplies per 4 outputs instead of 36: 2.25x fewer than direct convolution, for
//! transforms that are only additions. These convolutions are 83% of ResNet-18's arithmetic.
//! F(2x2, 3x3) is the variant whose rounding stays at fp32's level; larger tiles save more and
//! lose accuracy.

use gemm::Parallelism;
use rayon::prelude::*;

use super::{Epilogue, Scratch};

/// Input tile side, and the number of transform-domain products is its square.
pub const TILE_IN: usize = 4;
const POINTS: usize = TILE_IN * TILE_IN;

/// Kernel transform `G g G^T`, for weights `[(ky, kx, ci)][cout]` as the folded convolution
/// keeps them; gives `[POINTS][cin][cout]`. Computed a row of output channels at a time.
pub fn weights(weight: &[f32], cin: usize, cout: usize) -> Vec<f32> {
    const G: [[f32; 3]; TILE_IN] = [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ];
    let mut out = vec![0.0; POINTS * cin * cout];
    let mut gg = vec![0.0; TILE_IN * 3 * cout];
    for ci in 0..cin {
        let g = |ky: usize, kx: usize| &weight[((ky * 3 + kx) * cin + ci) * cout..][..cout];
        // gg[i][kx] = (G g)[i][kx]
        gg.fill(0.0);
        for i in 0..TILE_IN {
            for kx in 0..3 {
                let dst = &mut gg[(i * 3 + kx) * cout..][..cout];
                for (ky, &c) in G[i].iter().enumerate() {
                    dst.iter_mut().zip(g(ky, kx)).for_each(|(d, w)| *d += c * w);
                }
            }
        }
        // U[i][j] = ((G g) G^T)[i][j]
        for i in 0..TILE_IN {
            for j in 0..TILE_IN {
                let dst = &mut out[((i * TILE_IN + j) * cin + ci) * cout..][..cout];
                for (kx, &c) in G[j].iter().enumerate() {
                    let src = &gg[(i * 3 + kx) * cout..][..cout];
                    dst.iter_mut().zip(src).for_each(|(d, w)| *d += c * w);
                }
            }
        }
    }
    out
}

/// The four rows of `B^T d` (or columns of `d B`) from four input vectors, channel by channel.
fn input_transform(d: [&[f32]; 4], out: [&mut [f32]; 4]) {
    let [d0, d1, d2, d3] = d;
    let [o0, o1, o2, o3] = out;
    for c in 0..d0.len() {
        o0[c] = d0[c] - d2[c];
        o1[c] = d1[c] + d2[c];
        o2[c] = d2[c] - d1[c];
        o3[c] = d1[c] - d3[c];
    }
}

/// A 3x3 convolution, stride 1, padding 1, of NHWC `x` (`h x w x cin`) into `out`
/// (`h x w x cout`), with `weights` from [`weights`].
#[allow(clippy::too_many_arguments)]
pub fn conv(
    x: &[f32],
    (h, w): (usize, usize),
    cin: usize,
    cout: usize,
    weights: &[f32],
    epilogue: Epilogue,
    out: &mut Vec<f32>,
    scratch: &mut Scratch,
    parallelism: Parallelism,
) {
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let tiles = th * tw;
    let zeros = vec![0.0; cin];

    // Input transform: V[point][tile][ci] = (B^T d B) of each tile.
    // Every element of v, m and out is written below: resizing only grows them.
    let v = &mut scratch.input;
    v.resize(POINTS * tiles * cin, 0.0);
    let mut rows = vec![0.0; POINTS * cin];
    for ty in 0..th {
        for tx in 0..tw {
            let tile = ty * tw + tx;
            let pixel = |k: usize, l: usize| -> &[f32] {
                let (iy, ix) = ((2 * ty + k).wrapping_sub(1), (2 * tx + l).wrapping_sub(1));
                if iy < h && ix < w {
                    &x[(iy * w + ix) * cin..][..cin]
                } else {
                    &zeros
                }
            };
            // Columns first: rows[k][j] = (d B)[k][j].
            for k in 0..TILE_IN {
                let [r0, r1, r2, r3] = row_slices(&mut rows[k * TILE_IN * cin..], cin);
                input_transform(
                    [pixel(k, 0), pixel(k, 1), pixel(k, 2), pixel(k, 3)],
                    [r0, r1, r2, r3],
                );
            }
            // Then rows: V[i][j] = (B^T (d B))[i][j], scattered to each point's matrix.
            for j in 0..TILE_IN {
                let d = [0, 1, 2, 3].map(|k| &rows[(k * TILE_IN + j) * cin..][..cin]);
                let dst = [0, 1, 2, 3].map(|i| ((i * TILE_IN + j) * tiles + tile) * cin);
                let [a, b, c, e] = disjoint(v, dst, cin);
                input_transform(d, [a, b, c, e]);
            }
        }
    }

    // The 16 products, M[point] = V[point] x U[point].
    let m = &mut scratch.product;
    m.resize(POINTS * tiles * cout, 0.0);
    let product = |(point, dst): (usize, &mut [f32]), par: Parallelism| {
        let lhs = &v[point * tiles * cin..][..tiles * cin];
        let rhs = &weights[point * cin * cout..][..cin * cout];
        // SAFETY: dst is tiles x cout, lhs tiles x cin and rhs cin x cout, row-major, in
        // bounds as sliced; none alias.
        unsafe {
            gemm::gemm(
                tiles,
                cout,
                cin,
                dst.as_mut_ptr(),
                1,
                cout as isize,
                false,
                lhs.as_ptr(),
                1,
                cin as isize,
                rhs.as_ptr(),
                1,
                cout as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                par,
            )
        }
    };
    match parallelism {
        Parallelism::None => m
            .chunks_mut(tiles * cout)
            .enumerate()
            .for_each(|p| product(p, Parallelism::None)),
        _ => m
            .par_chunks_mut(tiles * cout)
            .enumerate()
            .for_each(|p| product(p, Parallelism::None)),
    }

    // Output transform: Y = A^T M A per tile, A^T = [[1, 1, 1, 0], [0, 1, -1, -1]], then bias,
    // residual and ReLU, for the pixels inside the image.
    out.resize(h * w * cout, 0.0);
    let mut s = vec![0.0; 2 * TILE_IN * cout];
    for ty in 0..th {
        for tx in 0..tw {
            let tile = ty * tw + tx;
            let at = |i: usize, j: usize| &m[((i * TILE_IN + j) * tiles + tile) * cout..][..cout];
            // s[b][i] = (M A)[i][b].
            for i in 0..TILE_IN {
                let (m0, m1, m2, m3) = (at(i, 0), at(i, 1), at(i, 2), at(i, 3));
                let (s0, s1) = s.split_at_mut(TILE_IN * cout);
                let (s0, s1) = (&mut s0[i * cout..][..cout], &mut s1[i * cout..][..cout]);
                for c in 0..cout {
                    s0[c] = m0[c] + m1[c] + m2[c];
                    s1[c] = m1[c] - m2[c] - m3[c];
                }
            }
            for b in 0..2 {
                let col = &s[b * TILE_IN * cout..][..TILE_IN * cout];
                let (s0, s1, s2, s3) = (
                    &col[..cout],
                    &col[cout..2 * cout],
                    &col[2 * cout..3 * cout],
                    &col[3 * cout..],
                );
                let ox = 2 * tx + b;
                for oy in [2 * ty, 2 * ty + 1] {
                    if oy >= h || ox >= w {
                        continue;
                    }
                    let at = (oy * w + ox) * cout;
                    let dst = &mut out[at..at + cout];
                    if oy == 2 * ty {
                        for c in 0..cout {
                            dst[c] = s0[c] + s1[c] + s2[c] + epilogue.bias[c];
                        }
                    } else {
                        for c in 0..cout {
                            dst[c] = s1[c] - s2[c] - s3[c] + epilogue.bias[c];
                        }
                    }
                    if let Some(r) = epilogue.residual {
                        dst.iter_mut()
                            .zip(&r[at..at + cout])
                            .for_each(|(d, r)| *d += r);
                    }
                    if epilogue.relu {
                        dst.iter_mut().for_each(|d| *d = d.max(0.0));
                    }
                }
            }
        }
    }
}

/// Four consecutive `len`-long slices of `buf`.
fn row_slices(buf: &mut [f32], len: usize) -> [&mut [f32]; 4] {
    let (a, rest) = buf.split_at_mut(len);
    let (b, rest) = rest.split_at_mut(len);
    let (c, rest) = rest.split_at_mut(len);
    [a, b, c, &mut rest[..len]]
}

/// Four `len`-long slices of `buf` at the ascending, non-overlapping `starts`.
fn disjoint(buf: &mut [f32], starts: [usize; 4], len: usize) -> [&mut [f32]; 4] {
    let (head, rest) = buf.split_at_mut(starts[1]);
    let (b, rest) = rest.split_at_mut(starts[2] - starts[1]);
    let (c, d) = rest.split_at_mut(starts[3] - starts[2]);
    [
        &mut head[starts[0]..][..len],
        &mut b[..len],
        &mut c[..len],
        &mut d[..len],
    ]
}
