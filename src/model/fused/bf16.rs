//! Matrix products with bf16 operands and f32 accumulation, on AVX512_BF16's `vdpbf16ps`.
//!
//! `vdpbf16ps` multiplies pairs of bf16 values and adds both products to an f32 lane: twice
//! the multiply-adds of an f32 FMA per instruction, on operands half the size. Each operand is
//! rounded to bf16 (8 significant bits, round to nearest even) as it is packed; sums stay f32,
//! as PyTorch's autocast does. The packing follows the instruction: the right-hand side in
//! panels of [`NR`] columns, each k-pair of a column side by side in one 32-bit word; the
//! left-hand side in panels of [`MR`] rows, each row's k-pair as one word that the kernel
//! broadcasts.

/// Rows and columns of the micro-tile: 12 x 32 keeps 24 accumulators in registers, enough to
/// cover `vdpbf16ps`'s latency at two a cycle.
const MR: usize = 12;
const NR: usize = 32;
/// k-pairs per block: a 32-column panel of 256 pairs is 32 KiB, an L1's worth.
const KP: usize = 256;

/// Whether this CPU runs the bf16 kernels (checked once).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bf16")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `x` rounded to bf16, to nearest even (NaN stays NaN): its top 16 bits.
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// Two values as one word of a k-pair: `lo` is the even k.
fn pair(lo: f32, hi: f32) -> u32 {
    u32::from(to_bf16(lo)) | (u32::from(to_bf16(hi)) << 16)
}

/// A matrix view: element (r, c) at `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl View<'_> {
    fn at(&self, r: usize, c: usize) -> f32 {
        self.data[r * self.rs + c * self.cs]
    }
}

/// Packing buffers, kept by the caller between products.
#[derive(Default)]
pub struct Packs {
    a: Vec<u32>,
    b: Vec<u32>,
}

/// `dst (m x n, row-major with row stride `drs`) = lhs · rhs`, or `+=` when `accumulate`, with
/// `lhs` `m x k` and `rhs` `k x n`. Panics unless [`available`].
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    drs: usize,
    lhs: View,
    rhs: View,
    accumulate: bool,
    packs: &mut Packs,
) {
    assert!(available(), "bf16 products need AVX512_BF16");
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * drs + n <= dst.len() && n <= drs);
    if !accumulate {
        for r in 0..m {
            dst[r * drs..][..n].fill(0.0);
        }
    }
    let pairs = k.div_ceil(2);
    let panels = n.div_ceil(NR);
    for p0 in (0..pairs).step_by(KP) {
        let kp = KP.min(pairs - p0);
        // B block: [panel][pair][NR] words.
        packs.b.clear();
        packs.b.resize(panels * kp * NR, 0);
        for (panel, words) in packs.b.chunks_exact_mut(kp * NR).enumerate() {
            for p in 0..kp {
                let k0 = 2 * (p0 + p);
                for j in 0..NR {
                    let c = panel * NR + j;
                    if c < n {
                        let hi = if k0 + 1 < k { rhs.at(k0 + 1, c) } else { 0.0 };
                        words[p * NR + j] = pair(rhs.at(k0, c), hi);
                    }
                }
            }
        }
        for r0 in (0..m).step_by(MR) {
            let rows = MR.min(m - r0);
            // A panel: [pair][MR] words.
            packs.a.clear();
            packs.a.resize(kp * MR, 0);
            for p in 0..kp {
                let k0 = 2 * (p0 + p);
                for i in 0..rows {
                    let hi = if k0 + 1 < k { lhs.at(r0 + i, k0 + 1) } else { 0.0 };
                    packs.a[p * MR + i] = pair(lhs.at(r0 + i, k0), hi);
                }
            }
            for panel in 0..panels {
                let cols = NR.min(n - panel * NR);
                let b = &packs.b[panel * kp * NR..][..kp * NR];
                let out = &mut dst[r0 * drs + panel * NR..];
                // SAFETY: `available()` was checked above; the kernel reads kp * MR words of
                // `a` and kp * NR of `b`, and writes `rows` rows of `cols` values at stride
                // `drs` of `out`, all in bounds by the sizes above.
                unsafe { kernel(kp, &packs.a, b, out, drs, rows, cols) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel(
    kp: usize,
    a: &[u32],
    b: &[u32],
    out: &mut [f32],
    drs: usize,
    rows: usize,
    cols: usize,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let (a, b) = (a.as_ptr(), b.as_ptr());
    for p in 0..kp {
        // SAFETY: p < kp, and b holds kp * NR words, a kp * MR.
        let (b0, b1) = unsafe {
            (
                _mm512_loadu_si512(b.add(p * NR).cast()),
                _mm512_loadu_si512(b.add(p * NR + 16).cast()),
            )
        };
        let (b0, b1): (__m512bh, __m512bh) = (std::mem::transmute(b0), std::mem::transmute(b1));
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: as above.
            let w = unsafe { *a.add(p * MR + i) };
            let ai: __m512bh = std::mem::transmute(_mm512_set1_epi32(w as i32));
            acc[0] = _mm512_dpbf16_ps(acc[0], ai, b0);
            acc[1] = _mm512_dpbf16_ps(acc[1], ai, b1);
        }
    }
    for (i, acc) in acc.iter().enumerate().take(rows) {
        for (half, v) in acc.iter().enumerate() {
            let c0 = half * 16;
            if c0 >= cols {
                break;
            }
            let mask: __mmask16 = if cols - c0 >= 16 {
                0xffff
            } else {
                (1u16 << (cols - c0)) - 1
            };
            // SAFETY: row i < rows and the masked lanes are the columns < cols of that row.
            unsafe {
                let ptr = out.as_mut_ptr().add(i * drs + c0);
                let old = _mm512_maskz_loadu_ps(mask, ptr);
                _mm512_mask_storeu_ps(ptr, mask, _mm512_add_ps(old, *v));
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel(_: usize, _: &[u32], _: &[u32], _: &mut [f32], _: usize, _: usize, _: usize) {
    unreachable!("available() is false off x86_64")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: to the even one, 1.
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: to the even one.
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert!(f32::from_bits(u32::from(to_bf16(f32::NAN)) << 16).is_nan());
    }

    /// Against the product of the bf16-rounded operands in f64, at sizes that are no multiple
    /// of any tile or block, with transposed views and accumulation.
    #[test]
    fn products_match_the_rounded_definition() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512_BF16");
            return;
        }
        let mut state = 7u32;
        let mut next = move || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1 << 23) as f32 - 1.0
        };
        let round = |x: f32| f64::from(f32::from_bits(u32::from(to_bf16(x)) << 16));
        let mut packs = Packs::default();
        for (m, n, k) in [(1, 1, 1), (13, 33, 7), (25, 17, 515), (40, 64, 600)] {
            let a: Vec<f32> = (0..m * k).map(|_| next()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| next()).collect();
            let start: Vec<f32> = (0..m * n).map(|_| next()).collect();
            let mut out = start.clone();
            // lhs row-major, rhs stored transposed (n x k).
            matmul(
                (m, n, k),
                &mut out,
                n,
                View { data: &a, rs: k, cs: 1 },
                View { data: &b, rs: 1, cs: k },
                true,
                &mut packs,
            );
            for r in 0..m {
                for c in 0..n {
                    let exact: f64 = (0..k)
                        .map(|i| round(a[r * k + i]) * round(b[c * k + i]))
                        .sum::<f64>()
                        + f64::from(start[r * n + c]);
                    let got = f64::from(out[r * n + c]);
                    assert!(
                        (got - exact).abs() < 1e-5 * (k as f64).sqrt().max(1.0),
                        "({m}, {n}, {k}) at ({r}, {c}): {got} vs {exact}"
                    );
                }
            }
        }
    }
}
