//! 3x3 stride-1 convolutions by Winograd's minimal filtering, F(m x m, 3x3) (Lavin & Gray,
//! 2015).
//!
//! Each m x m block of output pixels comes from an (m+2) x (m+2) input tile: the tile and the
//! kernel are taken into that transform domain, where the convolution is an element-wise
//! product, which summed over input channels is (m+2)^2 independent matrix products,
//! `[tiles, cin] x [cin, cout]`. F(2x2, 3x3) needs 16 multiplies per 4 outputs instead of 36
//! (2.25x fewer), F(4x4, 3x3) 36 per 16 (4x fewer) at the cost of larger transforms and more
//! rounding; these convolutions are 83% of ResNet-18's arithmetic.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{__m512, __mmask16};
use std::mem::MaybeUninit;

use gemm::Parallelism;
use rayon::prelude::*;

use super::bf16;
use super::product::{Rhs, Weights, matmul};
use super::{Epilogue, Scratch, grown};
use crate::model::Precision;

/// One F(m x m, 3x3) algorithm: its input (`bt`, `a x a`), kernel (`g`, `a x 3`) and output
/// (`at`, `m x a`) transforms, row-major, with `a = m + 2`.
pub struct Tiling {
    m: usize,
    bt: &'static [f32],
    g: &'static [f32],
    at: &'static [f32],
}

#[rustfmt::skip]
const F2_BT: [[f32; 4]; 4] = [
    [1.0, 0.0, -1.0, 0.0],
    [0.0, 1.0, 1.0, 0.0],
    [0.0, -1.0, 1.0, 0.0],
    [0.0, 1.0, 0.0, -1.0],
];
#[rustfmt::skip]
const F2_G: [[f32; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];
#[rustfmt::skip]
const F2_AT: [[f32; 4]; 2] = [
    [1.0, 1.0, 1.0, 0.0],
    [0.0, 1.0, -1.0, -1.0],
];

pub const F2: Tiling = Tiling {
    m: 2,
    bt: F2_BT.as_flattened(),
    g: F2_G.as_flattened(),
    at: F2_AT.as_flattened(),
};

#[rustfmt::skip]
const F4_BT: [[f32; 6]; 6] = [
    [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
    [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
    [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
    [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
    [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
    [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
];
#[rustfmt::skip]
const F4_G: [[f32; 3]; 6] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];
#[rustfmt::skip]
const F4_AT: [[f32; 6]; 4] = [
    [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
    [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
    [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
    [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
];

pub const F4: Tiling = Tiling {
    m: 4,
    bt: F4_BT.as_flattened(),
    g: F4_G.as_flattened(),
    at: F4_AT.as_flattened(),
};

/// The transpose of an `R x C` matrix.
const fn transposed<const R: usize, const C: usize>(m: [[f32; C]; R]) -> [[f32; R]; C] {
    let mut t = [[0.0; R]; C];
    let mut i = 0;
    while i < R {
        let mut j = 0;
        while j < C {
            t[j][i] = m[i][j];
            j += 1;
        }
        i += 1;
    }
    t
}

/// The `O x I` coefficients of one transform, as a type: the AVX-512 transforms are compiled
/// for each, so that zero terms vanish and the others multiply by an immediate, where
/// coefficients read at run time cost a test and a broadcast per term.
trait Coefficients<const O: usize, const I: usize> {
    const C: [[f32; I]; O];
}

/// `B^T` of F(m x m, 3x3): the input transform.
struct Input<const M: usize>;
/// `A^T`: the output transform.
struct Output<const M: usize>;
/// `A`: the output gradient's transform, for the weight gradient.
struct Gradient<const M: usize>;

impl Coefficients<4, 4> for Input<2> {
    const C: [[f32; 4]; 4] = F2_BT;
}
impl Coefficients<6, 6> for Input<4> {
    const C: [[f32; 6]; 6] = F4_BT;
}
impl Coefficients<2, 4> for Output<2> {
    const C: [[f32; 4]; 2] = F2_AT;
}
impl Coefficients<4, 6> for Output<4> {
    const C: [[f32; 6]; 4] = F4_AT;
}
impl Coefficients<4, 2> for Gradient<2> {
    const C: [[f32; 2]; 4] = transposed(F2_AT);
}
impl Coefficients<6, 4> for Gradient<4> {
    const C: [[f32; 4]; 6] = transposed(F4_AT);
}

/// Which of a tiling's transforms [`Tiling::tile_transform`] runs.
#[derive(Clone, Copy)]
enum Transform {
    Input,
    Output,
    Gradient,
}

/// The tiling a convolution runs by, if any: 3x3 stride-1 ones only. In f32, F(4x4) where
/// the maps are large (stages 1-2: 56 and 28 px at 224), F(2x2) on the small late maps, where
/// larger tiles mostly multiply padding and the products are too short for their transforms
/// to pay (measured: PERFORMANCE.md). In bf16, F(2x2) everywhere: F(4x4)'s transforms spread
/// values over a wide range before the rounding to bf16, which doubled the error (pooled
/// features 1.3e-2 from f32's against 6.6e-3, gradients 1.6x autocast's distance from f32
/// against 0.94x; PERFORMANCE.md, change 8).
pub fn tiling(
    (kernel, stride, pad): (usize, usize, usize),
    cin: usize,
    precision: Precision,
) -> Option<&'static Tiling> {
    if (kernel, stride, pad) != (3, 1, 1) {
        return None;
    }
    Some(if cin <= 128 && precision == Precision::Fp32 {
        &F4
    } else {
        &F2
    })
}

/// `dst = sum of coefs[l] * src(l)`, channel by channel, skipping zero coefficients.
fn combine<'a>(dst: &mut [f32], coefs: &[f32], src: impl Fn(usize) -> &'a [f32]) {
    dst.fill(0.0);
    for (l, &c) in coefs.iter().enumerate().filter(|(_, c)| **c != 0.0) {
        dst.iter_mut().zip(src(l)).for_each(|(d, s)| *d += c * s);
    }
}

/// Tiles ahead of the one being transformed whose pixels [`Tiling::input_transform`] asks
/// the memory for (measured: 4 beat 2 and 8; PERFORMANCE.md).
const PREFETCH_TILES: usize = 4;

/// A hint that `data` will be read soon.
fn prefetch(data: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in data.chunks(16) {
        // SAFETY: prefetching is a hint, valid for any address; this one is in `data`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast(),
            )
        };
    }
}

/// Whether this CPU runs the AVX-512 transforms (std caches the check), unless a test asks
/// for the portable path.
fn avx512() -> bool {
    #[cfg(test)]
    if tests::PORTABLE.get() {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Where a transform's values go: f32 values, the bf16 kernel's rows (two bf16 values a
/// word, rounded to nearest even as its operands are), or a convolution's output pixels.
enum Out<'a> {
    F32(Strided<'a, f32>),
    Bf16(Strided<'a, u32>),
    Pixels(Pixels<'a>),
}

/// Values `stride` apart in `data` (`stride` counts `T`s for f32, bf16 halves for `u32`).
struct Strided<'a, T> {
    data: &'a mut [T],
    stride: usize,
}

/// No output pixel: the tile reaches past the map.
const OUTSIDE: usize = usize::MAX;

/// One tile's output pixels, value `p` at `out[at[p]..]` (or [`OUTSIDE`]), each stored as
/// `act(value + bias [+ residual])` while in registers: no pass over a copy of the tile.
struct Pixels<'a> {
    out: &'a mut [f32],
    at: [usize; 16],
    epilogue: &'a Epilogue<'a>,
}

/// Stores of [`tile_transform_body`], inlined into the function of each output type, which
/// enables the instructions they need.
#[cfg(target_arch = "x86_64")]
trait Sink {
    /// Whether channels `..n` of each of the first `values` values are within the destination.
    fn holds(&self, values: usize, n: usize) -> bool;
    /// The masked lanes of `v` to channels `ch..` of value `p`.
    ///
    /// # Safety
    /// `holds(values, n)` for some `p < values` and the masked lanes `< n`, and the CPU has
    /// the caller's features.
    unsafe fn store(&mut self, p: usize, ch: usize, mask: __mmask16, v: __m512);
}

#[cfg(target_arch = "x86_64")]
impl Sink for Strided<'_, f32> {
    fn holds(&self, values: usize, n: usize) -> bool {
        values == 0 || (values - 1) * self.stride + n <= self.data.len()
    }

    #[inline(always)]
    unsafe fn store(&mut self, p: usize, ch: usize, mask: __mmask16, v: __m512) {
        let at = p * self.stride + ch;
        // SAFETY: the caller's promise.
        unsafe { std::arch::x86_64::_mm512_mask_storeu_ps(self.data.as_mut_ptr().add(at), mask, v) }
    }
}

#[cfg(target_arch = "x86_64")]
impl Sink for Strided<'_, u32> {
    fn holds(&self, values: usize, n: usize) -> bool {
        values == 0 || (values - 1) * self.stride + n <= 2 * self.data.len()
    }

    #[inline(always)]
    unsafe fn store(&mut self, p: usize, ch: usize, mask: __mmask16, v: __m512) {
        use std::arch::x86_64::*;
        let at = p * self.stride + ch;
        // SAFETY: the caller's promise (AVX512_BF16, BW and VL among its features).
        unsafe {
            let h = _mm512_cvtneps_pbh(v);
            _mm256_mask_storeu_epi16(
                self.data.as_mut_ptr().cast::<u16>().add(at).cast(),
                mask,
                std::mem::transmute::<__m256bh, __m256i>(h),
            )
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl Sink for Pixels<'_> {
    fn holds(&self, values: usize, n: usize) -> bool {
        let Epilogue { bias, residual, .. } = self.epilogue;
        let within =
            |at: usize| at + n <= self.out.len() && residual.is_none_or(|r| at + n <= r.len());
        values <= self.at.len()
            && n <= bias.len()
            && self.at[..values]
                .iter()
                .all(|&at| at == OUTSIDE || within(at))
    }

    #[inline(always)]
    unsafe fn store(&mut self, p: usize, ch: usize, mask: __mmask16, v: __m512) {
        use std::arch::x86_64::*;
        let at = self.at[p];
        if at == OUTSIDE {
            return;
        }
        let Epilogue {
            bias,
            residual,
            relu,
        } = self.epilogue;
        // SAFETY: the caller's promise: the masked lanes are within the bias, the residual
        // and the output. The operations of the portable epilogue, in its order.
        unsafe {
            let mut v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, bias.as_ptr().add(ch)));
            if let Some(r) = residual {
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, r.as_ptr().add(at + ch)));
            }
            if *relu {
                v = _mm512_max_ps(v, _mm512_setzero_ps());
            }
            _mm512_mask_storeu_ps(self.out.as_mut_ptr().add(at + ch), mask, v)
        }
    }
}

/// `C d C^T` of one tile, 16 channels at a time in registers: `d[k * I + l]` is the tile's
/// value (k, l), `C` is `T`'s `O x I` coefficients, and value (i, j) of the result goes to
/// channels `..n` of `out`'s value `i * O + j`. Every transform is one of these: the input's
/// (`C = B^T`), the output's (`C = A^T`) and the output gradient's (`C = A`). The same
/// operations in the same order as [`combine`]'s two passes (each product rounded, then
/// added), so the same bits as the portable path; it reads and writes each value once where
/// `combine` passes over memory once per term.
///
/// # Safety
/// The CPU has AVX-512F and the features of `out`'s [`Sink::store`]; only called from the
/// functions that enable them, into which it is inlined.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tile_transform_body<const I: usize, const O: usize, T: Coefficients<O, I>, S: Sink>(
    d: &[&[f32]],
    n: usize,
    mut out: S,
) {
    use std::arch::x86_64::*;
    assert!(d.len() >= I * I && d[..I * I].iter().all(|d| d.len() >= n));
    assert!(out.holds(O * O, n));
    // Plain loops and a function with the same target features, not closures: a closure is
    // compiled without them and called for every term.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn term(sum: __m512, w: f32, x: __m512) -> __m512 {
        if w == 0.0 {
            sum
        } else {
            _mm512_add_ps(sum, _mm512_mul_ps(_mm512_set1_ps(w), x))
        }
    }
    for ch in (0..n).step_by(16) {
        let mask = (u32::MAX >> (32 - (n - ch).min(16))) as __mmask16;
        // rows[k][j] = (d C^T)[k][j] = sum over l of d[k][l] c[j][l]. Uninitialised until
        // written: zeroing them costs a memset of I * O vectors per 16 channels of a tile.
        let mut rows = [[MaybeUninit::<__m512>::uninit(); O]; I];
        for (k, row) in rows.iter_mut().enumerate() {
            let mut x = [unsafe { _mm512_setzero_ps() }; I];
            for (l, x) in x.iter_mut().enumerate() {
                // SAFETY: the masked lanes are below n, within every value (asserted).
                *x = unsafe { _mm512_maskz_loadu_ps(mask, d[k * I + l][ch..].as_ptr()) };
            }
            for (j, r) in row.iter_mut().enumerate() {
                let mut sum = unsafe { _mm512_setzero_ps() };
                for (l, x) in x.iter().enumerate() {
                    // SAFETY: the caller's promise of AVX-512F.
                    sum = unsafe { term(sum, T::C[j][l], *x) };
                }
                r.write(sum);
            }
        }
        for i in 0..O {
            for j in 0..O {
                let mut v = unsafe { _mm512_setzero_ps() };
                for (k, row) in rows.iter().enumerate() {
                    // SAFETY: every row was written above; as above.
                    v = unsafe { term(v, T::C[i][k], row[j].assume_init()) };
                }
                // SAFETY: within out (asserted), the masked lanes below n; the caller's
                // features.
                unsafe { out.store(i * O + j, ch, mask, v) };
            }
        }
    }
}

/// [`tile_transform_body`] into f32 values (plain, or output pixels).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_transform_f32<const I: usize, const O: usize, T: Coefficients<O, I>, S: Sink>(
    d: &[&[f32]],
    n: usize,
    out: S,
) {
    // SAFETY: this function enables what the stores need.
    unsafe { tile_transform_body::<I, O, T, _>(d, n, out) }
}

/// [`tile_transform_body`] into bf16 values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn tile_transform_bf16<const I: usize, const O: usize, T: Coefficients<O, I>>(
    d: &[&[f32]],
    n: usize,
    out: Strided<u32>,
) {
    // SAFETY: this function enables what the stores need.
    unsafe { tile_transform_body::<I, O, T, _>(d, n, out) }
}

/// Where [`Tiling::input_transform`] writes.
enum Transformed<'a> {
    /// `[point][tile][ci]`, f32.
    F32(&'a mut Vec<f32>),
    /// `[point][tile][ci]` as the bf16 kernel's rows ([`bf16::matmul_rows`]): each point's
    /// tiles rounded up to whole micro-tiles, `ci` in pairs (an even count), on AVX-512 only.
    Bf16(&'a mut Vec<u32>),
}

/// Image, tile row and tile column of tile `t`, tiles numbered image by image, row by row in
/// maps of `th x tw` tiles.
fn tile_at(t: usize, (th, tw): (usize, usize)) -> (usize, usize, usize) {
    (t / (th * tw), t % (th * tw) / tw, t % tw)
}

/// Floats of a block of tiles' transformed input and product in [`Tiling::conv`]: small enough
/// to stay in a core's L2 cache between the transforms and the products, which are bound by
/// memory when they run over whole maps.
const BLOCK_FLOATS: usize = 1 << 17;

impl Tiling {
    /// The side of the output block each tile gives.
    pub fn m(&self) -> usize {
        self.m
    }

    fn a(&self) -> usize {
        self.m + 2
    }

    /// [`tile_transform_body`] with one of this tiling's transforms.
    ///
    /// # Safety
    /// The CPU has AVX-512F, and AVX512_BF16 (with BW and VL) for bf16 output.
    #[cfg(target_arch = "x86_64")]
    unsafe fn tile_transform(&self, transform: Transform, d: &[&[f32]], n: usize, out: Out) {
        /// # Safety
        /// As [`Tiling::tile_transform`]'s.
        unsafe fn run<const I: usize, const O: usize, T: Coefficients<O, I>>(
            d: &[&[f32]],
            n: usize,
            out: Out,
        ) {
            // SAFETY: the caller's promise; the functions assert their bounds.
            unsafe {
                match out {
                    Out::F32(out) => tile_transform_f32::<I, O, T, _>(d, n, out),
                    Out::Pixels(out) => tile_transform_f32::<I, O, T, _>(d, n, out),
                    Out::Bf16(out) => tile_transform_bf16::<I, O, T>(d, n, out),
                }
            }
        }
        // SAFETY: the caller's promise.
        unsafe {
            match (self.m, transform) {
                (2, Transform::Input) => run::<4, 4, Input<2>>(d, n, out),
                (4, Transform::Input) => run::<6, 6, Input<4>>(d, n, out),
                (2, Transform::Output) => run::<4, 2, Output<2>>(d, n, out),
                (4, Transform::Output) => run::<6, 4, Output<4>>(d, n, out),
                (2, Transform::Gradient) => run::<2, 4, Gradient<2>>(d, n, out),
                (4, Transform::Gradient) => run::<4, 6, Gradient<4>>(d, n, out),
                _ => unreachable!("F(2x2) and F(4x4) only"),
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn tile_transform(&self, _: Transform, _: &[&[f32]], _: usize, _: Out) {
        unreachable!("avx512() is false off x86_64")
    }

    /// Tiles down and across one `h x w` map, and in all of `images` such maps.
    fn tiles(&self, images: usize, (h, w): (usize, usize)) -> (usize, usize, usize) {
        let (th, tw) = (h.div_ceil(self.m), w.div_ceil(self.m));
        (th, tw, images * th * tw)
    }

    /// Tiles per block of [`Tiling::conv`]: [`BLOCK_FLOATS`] over one tile's transformed input
    /// and product, in whole micro-tiles of the bf16 kernel's rows.
    fn block_tiles(&self, cin: usize, cout: usize) -> usize {
        (BLOCK_FLOATS / ((self.m + 2).pow(2) * (cin + cout))).next_multiple_of(12)
    }

    /// Kernel transform `G g G^T`, for weights `[(ky, kx, ci)][cout]` as the folded
    /// convolution keeps them; gives `[a * a][cin][cout]` in `out`. Each transform point is
    /// a weighted sum of the nine taps, computed in parallel over the points.
    pub fn weights(&self, weight: &[f32], cin: usize, cout: usize, out: &mut Vec<f32>) {
        let a = self.a();
        let n = cin * cout;
        out.resize(a * a * n, 0.0);
        out.par_chunks_mut(n).enumerate().for_each(|(point, u)| {
            let (i, j) = (point / a, point % a);
            u.fill(0.0);
            for ky in 0..3 {
                for kx in 0..3 {
                    let c = self.g[i * 3 + ky] * self.g[j * 3 + kx];
                    if c != 0.0 {
                        let tap = &weight[(ky * 3 + kx) * n..][..n];
                        u.iter_mut().zip(tap).for_each(|(u, w)| *u += c * w);
                    }
                }
            }
        });
    }

    /// Input transform: (B^T d B) of each of `tiles` of the NHWC maps `x` (each
    /// `h x w x cin`), numbered as [`tile_at`] does, into `out` (see [`Transformed`]).
    fn input_transform(
        &self,
        x: &[f32],
        (h, w): (usize, usize),
        cin: usize,
        tiles: std::ops::Range<usize>,
        mut out: Transformed,
    ) {
        let (m_, a) = (self.m, self.a());
        let points = a * a;
        let (th, tw, _) = self.tiles(1, (h, w));
        let zeros = vec![0.0; cin];
        let count = tiles.len();
        let avx512 = avx512();
        // Values from one point's matrix to the next. Every value of the tiles is written
        // below (bf16's padding rows are read, but their sums dropped).
        let point_values = match &mut out {
            Transformed::F32(v) => {
                grown(v, points * count * cin);
                count * cin
            }
            Transformed::Bf16(words) => {
                assert!(
                    avx512 && cin.is_multiple_of(2),
                    "bf16 rows of whole pairs, on AVX-512"
                );
                let rows = count.next_multiple_of(bf16::MR);
                grown(words, points * rows * cin / 2);
                rows * cin
            }
        };
        // The portable path's (d B); the AVX-512 path keeps it in registers (this runs per block).
        let mut rows = if avx512 {
            Vec::new()
        } else {
            vec![0.0; points * cin]
        };
        // The pixel (k, l) of tile (image, ty, tx): zeros outside the map.
        let pixel_of = |(image, ty, tx): (usize, usize, usize), k: usize, l: usize| -> &[f32] {
            let (iy, ix) = ((m_ * ty + k).wrapping_sub(1), (m_ * tx + l).wrapping_sub(1));
            if iy < h && ix < w {
                &x[((image * h + iy) * w + ix) * cin..][..cin]
            } else {
                &zeros
            }
        };
        for (tile, t) in tiles.clone().enumerate() {
            // Tile rows lie far apart in the maps; asked for ahead, they arrive in time.
            if t + PREFETCH_TILES < tiles.end {
                let ahead = tile_at(t + PREFETCH_TILES, (th, tw));
                (0..points).for_each(|p| prefetch(pixel_of(ahead, p / a, p % a)));
            }
            let at = tile_at(t, (th, tw));
            let pixel = |k: usize, l: usize| pixel_of(at, k, l);
            if avx512 {
                let mut d = [&zeros[..]; 36];
                for (p, d) in d.iter_mut().take(points).enumerate() {
                    *d = pixel(p / a, p % a);
                }
                let stride = point_values;
                let dst = match &mut out {
                    Transformed::F32(v) => Out::F32(Strided {
                        data: &mut v[tile * cin..],
                        stride,
                    }),
                    Transformed::Bf16(words) => Out::Bf16(Strided {
                        data: &mut words[tile * cin / 2..],
                        stride,
                    }),
                };
                // SAFETY: the CPU has AVX-512F (checked above), and AVX512_BF16 where the
                // weights are bf16; the function asserts the bounds of its reads and writes.
                unsafe { self.tile_transform(Transform::Input, &d, cin, dst) };
                continue;
            }
            let Transformed::F32(v) = &mut out else {
                unreachable!("bf16 rows only on the AVX-512 path (asserted)")
            };
            // Columns first: rows[k][j] = (d B)[k][j].
            for k in 0..a {
                for j in 0..a {
                    combine(
                        &mut rows[(k * a + j) * cin..][..cin],
                        &self.bt[j * a..][..a],
                        |l| pixel(k, l),
                    );
                }
            }
            // Then rows: V[i][j] = (B^T (d B))[i][j], into each point's matrix.
            for i in 0..a {
                for j in 0..a {
                    combine(
                        &mut v[((i * a + j) * count + tile) * cin..][..cin],
                        &self.bt[i * a..][..a],
                        |k| &rows[(k * a + j) * cin..][..cin],
                    );
                }
            }
        }
    }

    /// A 3x3 convolution, stride 1, padding 1, of `images` NHWC images `x` (each `h x w x cin`)
    /// into `out` (each `h x w x cout`), with `weights` from [`Tiling::weights`]. The tiles of
    /// all the images go through the same products, which several small images make taller.
    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        &self,
        x: &[f32],
        images: usize,
        (h, w): (usize, usize),
        cin: usize,
        cout: usize,
        weights: &Weights,
        epilogue: Epilogue,
        out: &mut [f32],
        scratch: &mut Scratch,
        parallelism: Parallelism,
    ) {
        let (m_, a) = (self.m, self.a());
        let points = a * a;
        let (th, tw, tiles) = self.tiles(images, (h, w));
        assert_eq!(
            out.len(),
            images * h * w * cout,
            "the output holds every map"
        );
        let block = self.block_tiles(cin, cout);
        let avx512 = avx512();
        // The portable output transform's (M A) and A^T M A of a tile.
        let (mut s, mut y) = match avx512 {
            true => (Vec::new(), Vec::new()),
            false => (vec![0.0; a * m_ * cout], vec![0.0; m_ * m_ * cout]),
        };
        // bf16 products read the transformed input as the bf16 rows the transform writes, not
        // converted from f32 in a pass of their own (the portable transforms keep that path).
        let bf16_rows = weights.precision() == Precision::Bf16 && avx512 && cin.is_multiple_of(2);
        for first in (0..tiles).step_by(block) {
            let count = block.min(tiles - first);
            let range = first..first + count;
            if bf16_rows {
                let words = Transformed::Bf16(&mut scratch.words);
                self.input_transform(x, (h, w), cin, range, words);
            } else {
                let v = Transformed::F32(&mut scratch.input);
                self.input_transform(x, (h, w), cin, range, v);
            }
            let (v, words) = (&scratch.input, &scratch.words);

            // The products, M[point] = V[point] x U[point]. Every element of m is written
            // below: resizing only grows it.
            let m = grown(&mut scratch.product, points * count * cout);
            let product =
                |(point, dst): (usize, &mut [f32]), par: Parallelism| match weights.get(point) {
                    Rhs::Bf16(packed) if bf16_rows => {
                        let rows = count.next_multiple_of(bf16::MR) * cin / 2;
                        let lhs = &words[point * rows..][..rows];
                        bf16::matmul_rows(count, dst, cout, false, lhs, packed, par)
                    }
                    rhs => {
                        let lhs = &v[point * count * cin..][..count * cin];
                        matmul(
                            (count, cout, cin),
                            dst,
                            cout,
                            false,
                            lhs,
                            (cin, 1),
                            rhs,
                            par,
                        )
                    }
                };
            match parallelism {
                Parallelism::None => m
                    .chunks_mut(count * cout)
                    .enumerate()
                    .for_each(|p| product(p, Parallelism::None)),
                _ => m
                    .par_chunks_mut(count * cout)
                    .enumerate()
                    .for_each(|p| product(p, Parallelism::None)),
            }

            // Output transform: Y = A^T M A per tile, then bias, residual and ReLU, for the
            // pixels inside the image.
            for (tile, t) in (first..first + count).enumerate() {
                let (image, ty, tx) = tile_at(t, (th, tw));
                let at = |i: usize, j: usize| &m[((i * a + j) * count + tile) * cout..][..cout];
                // Where the tile's output value (r, b) goes, if inside the map.
                let pixel_at = |rb: usize| {
                    let (oy, ox) = (m_ * ty + rb / m_, m_ * tx + rb % m_);
                    (oy < h && ox < w).then(|| ((image * h + oy) * w + ox) * cout)
                };
                if avx512 {
                    let mut d = [&[][..]; 36];
                    for (p, d) in d.iter_mut().take(points).enumerate() {
                        *d = at(p / a, p % a);
                    }
                    let mut pixels = Pixels {
                        out: &mut *out,
                        at: [OUTSIDE; 16],
                        epilogue: &epilogue,
                    };
                    for (rb, at) in pixels.at.iter_mut().take(m_ * m_).enumerate() {
                        if let Some(pixel) = pixel_at(rb) {
                            *at = pixel;
                        }
                    }
                    // SAFETY: the CPU has AVX-512F (checked above); the function asserts the
                    // bounds of its reads and writes.
                    unsafe {
                        self.tile_transform(Transform::Output, &d, cout, Out::Pixels(pixels))
                    };
                    continue;
                }
                // s[i][b] = (M A)[i][b], then y[r][b] = (A^T s)[r][b].
                for i in 0..a {
                    for b in 0..m_ {
                        combine(
                            &mut s[(i * m_ + b) * cout..][..cout],
                            &self.at[b * a..][..a],
                            |j| at(i, j),
                        );
                    }
                }
                for (rb, y) in y.chunks_exact_mut(cout).enumerate() {
                    let (r, b) = (rb / m_, rb % m_);
                    combine(y, &self.at[r * a..][..a], |i| {
                        &s[(i * m_ + b) * cout..][..cout]
                    });
                }
                for (rb, y) in y.chunks_exact(cout).enumerate() {
                    let Some(at) = pixel_at(rb) else { continue };
                    let dst = &mut out[at..at + cout];
                    dst.iter_mut()
                        .zip(y)
                        .zip(epilogue.bias)
                        .for_each(|((d, y), b)| *d = y + b);
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

    /// The weight gradient of the convolution [`Tiling::conv`] computes, from its input `x` and
    /// the gradient `dy` of its output (`images` NHWC maps, `h x w x cin` and `h x w x cout`):
    /// `dw[(ky, kx, ci)][co]` is set to it, or has it added where `accumulate`. Forward,
    /// `Y = A^T (U . V) A` per tile; so the gradient in the transform domain is
    /// `dU[point] = sum over tiles of V[point]^T dM[point]` with `dM = A dY A^T`, and
    /// `dw = G^T dU G`: a product per point whose long side is the tiles, with 2.25x (F(2x2))
    /// or 4x (F(4x4)) fewer multiplies than the im2col product.
    #[allow(clippy::too_many_arguments)]
    pub fn weight_gradient(
        &self,
        x: &[f32],
        dy: &[f32],
        images: usize,
        (h, w): (usize, usize),
        (cin, cout): (usize, usize),
        dw: &mut [f32],
        accumulate: bool,
        scratch: &mut Scratch,
    ) {
        let (m_, a) = (self.m, self.a());
        let points = a * a;
        let (th, tw, tiles) = self.tiles(images, (h, w));
        self.input_transform(
            x,
            (h, w),
            cin,
            0..tiles,
            Transformed::F32(&mut scratch.input),
        );
        let v = &scratch.input;

        // dM[point][tile][co] = (A dY A^T) of each tile, dY zero outside the map.
        let dm = grown(&mut scratch.product, points * tiles * cout);
        let column = |matrix: &[f32], width: usize, j: usize| -> Vec<f32> {
            matrix.iter().skip(j).step_by(width).copied().collect()
        };
        // a_rows[j] = row j of A = column j of A^T.
        let a_rows: Vec<Vec<f32>> = (0..a).map(|j| column(self.at, a, j)).collect();
        let zeros = vec![0.0; cout];
        let mut s = vec![0.0; m_ * a * cout];
        let avx512 = avx512();
        // The output gradient's pixel (r, b) of tile (image, ty, tx): zeros outside the map.
        let pixel_of = |(image, ty, tx): (usize, usize, usize), r: usize, b: usize| -> &[f32] {
            let (oy, ox) = (m_ * ty + r, m_ * tx + b);
            if oy < h && ox < w {
                &dy[((image * h + oy) * w + ox) * cout..][..cout]
            } else {
                &zeros
            }
        };
        for tile in 0..tiles {
            if tile + PREFETCH_TILES < tiles {
                let ahead = tile_at(tile + PREFETCH_TILES, (th, tw));
                (0..m_ * m_).for_each(|p| prefetch(pixel_of(ahead, p / m_, p % m_)));
            }
            let at = tile_at(tile, (th, tw));
            let pixel = |r: usize, b: usize| pixel_of(at, r, b);
            if avx512 {
                let mut d = [&zeros[..]; 16];
                for (p, d) in d.iter_mut().take(m_ * m_).enumerate() {
                    *d = pixel(p / m_, p % m_);
                }
                let dm = Out::F32(Strided {
                    data: &mut dm[tile * cout..],
                    stride: tiles * cout,
                });
                // SAFETY: the CPU has AVX-512F (checked above); the function asserts the
                // bounds of its reads and writes.
                unsafe { self.tile_transform(Transform::Gradient, &d, cout, dm) };
                continue;
            }
            // s[r][j] = (dY A^T)[r][j].
            for r in 0..m_ {
                for (j, a_row) in a_rows.iter().enumerate() {
                    combine(&mut s[(r * a + j) * cout..][..cout], a_row, |b| pixel(r, b));
                }
            }
            // dM[i][j] = (A s)[i][j].
            for (i, a_row) in a_rows.iter().enumerate() {
                for j in 0..a {
                    combine(
                        &mut dm[((i * a + j) * tiles + tile) * cout..][..cout],
                        a_row,
                        |r| &s[(r * a + j) * cout..][..cout],
                    );
                }
            }
        }

        // dU[point] = V[point]^T dM[point], [points][cin][cout].
        let du = grown(&mut scratch.gradient, points * cin * cout);
        for (point, du) in du.chunks_mut(cin * cout).enumerate() {
            matmul(
                (cin, cout, tiles),
                du,
                cout,
                false,
                &v[point * tiles * cin..][..tiles * cin],
                (1, cin),
                Rhs::rows(&dm[point * tiles * cout..][..tiles * cout], cout),
                Parallelism::None,
            );
        }

        // dw[ky][kx] = (G^T dU G)[ky][kx]: each tap a weighted sum of the points.
        let g_columns: Vec<Vec<f32>> = (0..3).map(|k| column(self.g, 3, k)).collect();
        let n = cin * cout;
        let mut tap = vec![0.0; n];
        for ky in 0..3 {
            for kx in 0..3 {
                let coefs: Vec<f32> = (0..points)
                    .map(|p| g_columns[ky][p / a] * g_columns[kx][p % a])
                    .collect();
                combine(&mut tap, &coefs, |p| &du[p * n..][..n]);
                let dst = &mut dw[(ky * 3 + kx) * n..][..n];
                if accumulate {
                    dst.iter_mut().zip(&tap).for_each(|(d, t)| *d += t);
                } else {
                    dst.copy_from_slice(&tap);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fused::tests::values;

    /// The definition: out[y][x][o] = sum over taps and input channels, zero outside.
    fn direct(x: &[f32], (h, w): (usize, usize), cin: usize, weight: &[f32]) -> Vec<f32> {
        let cout = weight.len() / (9 * cin);
        let mut out = vec![0.0; h * w * cout];
        for y in 0..h {
            for xx in 0..w {
                for t in 0..9 {
                    let (iy, ix) = ((y + t / 3).wrapping_sub(1), (xx + t % 3).wrapping_sub(1));
                    if iy >= h || ix >= w {
                        continue;
                    }
                    for ci in 0..cin {
                        let v = x[(iy * w + ix) * cin + ci];
                        for o in 0..cout {
                            out[(y * w + xx) * cout + o] += v * weight[(t * cin + ci) * cout + o];
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn both_tilings_compute_the_convolution_at_any_size() {
        // Sizes that are not multiples of either tile; two images through the same products;
        // the last case in several blocks of tiles.
        let mut next = values(1);
        let images = 2;
        for (cin, cout, h, w) in [(3, 5, 7, 5), (3, 5, 1, 1), (3, 5, 9, 10), (32, 24, 30, 29)] {
            let x: Vec<f32> = (0..images * h * w * cin).map(|_| next()).collect();
            let weight: Vec<f32> = (0..9 * cin * cout).map(|_| next()).collect();
            let residual: Vec<f32> = (0..images * h * w * cout).map(|_| next()).collect();
            let bias: Vec<f32> = (0..cout).map(|_| next()).collect();
            let expected: Vec<f32> = x
                .chunks(h * w * cin)
                .flat_map(|x| direct(x, (h, w), cin, &weight))
                .collect::<Vec<_>>()
                .iter()
                .zip(&residual)
                .enumerate()
                .map(|(i, (v, r))| (v + bias[i % cout] + r).max(0.0))
                .collect();
            for tiling in [&F2, &F4] {
                if h == 30 {
                    let (.., tiles) = tiling.tiles(images, (h, w));
                    assert!(tiles > tiling.block_tiles(cin, cout), "several blocks");
                }
                let mut out = vec![0.0; images * h * w * cout];
                let epilogue = Epilogue {
                    bias: &bias,
                    residual: Some(&residual),
                    relu: true,
                };
                tiling.conv(
                    &x,
                    images,
                    (h, w),
                    cin,
                    cout,
                    &{
                        let mut u = Weights::new(crate::model::Precision::Fp32);
                        let points = (tiling.m + 2).pow(2);
                        u.set((points, cin, cout), |u| {
                            tiling.weights(&weight, cin, cout, u)
                        });
                        u
                    },
                    epilogue,
                    &mut out,
                    &mut Scratch::default(),
                    Parallelism::None,
                );
                let worst = out
                    .iter()
                    .zip(&expected)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(worst < 1e-4, "F({}) at {h}x{w}: off by {worst}", tiling.m);
            }
        }
    }

    thread_local! {
        /// Set by a test to run the portable transforms on a CPU with AVX-512.
        pub static PORTABLE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// The AVX-512 transforms against the portable ones, bit for bit; in bf16 (where the CPU
    /// has it) the AVX-512 input transform writes the bf16 kernel's rows itself, the portable
    /// path's f32 values are converted by the product.
    #[test]
    fn the_avx512_transforms_give_the_portable_bits() {
        if !avx512() {
            eprintln!("skipped: this CPU has no AVX-512F");
            return;
        }
        let mut next = values(3);
        // 20 and 21 channels: whole vectors and masked ones (bf16 rows take whole pairs); maps
        // no multiple of either tile, in several blocks of tiles.
        let (cin, cout, h, w, images) = (20, 21, 41, 39, 2);
        let x: Vec<f32> = (0..images * h * w * cin).map(|_| next()).collect();
        let dy: Vec<f32> = (0..images * h * w * cout).map(|_| next()).collect();
        let weight: Vec<f32> = (0..9 * cin * cout).map(|_| next()).collect();
        let bias: Vec<f32> = (0..cout).map(|_| next()).collect();
        let residual: Vec<f32> = (0..images * h * w * cout).map(|_| next()).collect();
        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let precisions = [Precision::Fp32]
            .into_iter()
            .chain(bf16::available().then_some(Precision::Bf16));
        if !bf16::available() {
            eprintln!("bf16 skipped: this CPU has no AVX512_BF16");
        }
        for (precision, tiling) in precisions.flat_map(|p| [(p, &F2), (p, &F4)]) {
            let (.., tiles) = tiling.tiles(images, (h, w));
            assert!(tiles > tiling.block_tiles(cin, cout), "several blocks");
            let mut u = Weights::new(precision);
            u.set(((tiling.m + 2).pow(2), cin, cout), |u| {
                tiling.weights(&weight, cin, cout, u)
            });
            let run = |portable: bool| {
                PORTABLE.set(portable);
                let mut out = vec![0.0; images * h * w * cout];
                let epilogue = Epilogue {
                    bias: &bias,
                    residual: Some(&residual),
                    relu: true,
                };
                let mut scratch = Scratch::default();
                tiling.conv(
                    &x,
                    images,
                    (h, w),
                    cin,
                    cout,
                    &u,
                    epilogue,
                    &mut out,
                    &mut scratch,
                    Parallelism::None,
                );
                let mut dw = vec![0.0; 9 * cin * cout];
                tiling.weight_gradient(
                    &x,
                    &dy,
                    images,
                    (h, w),
                    (cin, cout),
                    &mut dw,
                    false,
                    &mut scratch,
                );
                PORTABLE.set(false);
                (bits(&out), bits(&dw))
            };
            assert!(run(false) == run(true), "F({}) in {precision}", tiling.m);
        }
    }

    #[test]
    fn both_tilings_compute_the_weight_gradient_at_any_size() {
        let mut next = values(7);
        let (cin, cout, images) = (3, 5, 2);
        for (h, w) in [(7, 5), (1, 1), (9, 10)] {
            let x: Vec<f32> = (0..images * h * w * cin).map(|_| next()).collect();
            let dy: Vec<f32> = (0..images * h * w * cout).map(|_| next()).collect();
            // The definition: dw[t][ci][co] = sum over images and pixels of dy * the input
            // pixel under tap t, zero outside; `earlier` stands for what an accumulating call
            // finds there.
            let earlier: Vec<f32> = (0..9 * cin * cout).map(|_| next()).collect();
            let mut expected = earlier.clone();
            for image in 0..images {
                for y in 0..h {
                    for xx in 0..w {
                        for t in 0..9usize {
                            let (iy, ix) =
                                ((y + t / 3).wrapping_sub(1), (xx + t % 3).wrapping_sub(1));
                            if iy >= h || ix >= w {
                                continue;
                            }
                            for ci in 0..cin {
                                let v = x[((image * h + iy) * w + ix) * cin + ci];
                                for co in 0..cout {
                                    let g = dy[((image * h + y) * w + xx) * cout + co];
                                    expected[(t * cin + ci) * cout + co] += v * g;
                                }
                            }
                        }
                    }
                }
            }
            for tiling in [&F2, &F4] {
                let mut dw = earlier.clone();
                tiling.weight_gradient(
                    &x,
                    &dy,
                    images,
                    (h, w),
                    (cin, cout),
                    &mut dw,
                    true,
                    &mut Scratch::default(),
                );
                let worst = dw
                    .iter()
                    .zip(&expected)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(worst < 1e-4, "F({}) at {h}x{w}: off by {worst}", tiling.m);
            }
        }
    }
}
