//! Matrix products with bf16 operands and f32 accumulation, on AVX512_BF16's `vdpbf16ps`.
//!
//! `vdpbf16ps` multiplies pairs of bf16 values and adds both products to an f32 lane: twice
//! the multiply-adds of an f32 FMA per instruction, on operands half the size. Each operand is
//! rounded to bf16 (8 significant bits, to nearest even) as it is packed; sums stay f32, as
//! PyTorch's autocast does. The layouts follow the instruction: the right-hand side in panels
//! of [`NR`] columns, each k-pair of a column side by side in one 32-bit word ([`Packed`]); the
//! left-hand side as bf16 rows, whose consecutive k-pairs are already such words, broadcast
//! one row at a time.

use std::cell::RefCell;

use gemm::Parallelism;
use rayon::prelude::*;

/// Rows and columns of the micro-tile: 12 x 32 keeps 24 accumulators in registers, enough to
/// cover `vdpbf16ps`'s latency. A left-hand side given as bf16 rows ([`matmul_rows`]) has whole
/// micro-tiles of rows.
pub const MR: usize = 12;
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
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512bf16")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `x` rounded to bf16, to nearest even (NaN stays NaN): its top 16 bits, as `vcvtneps2bf16`
/// rounds.
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// `src` rounded to bf16 into `dst`, two values a word (the last word's upper half zero when
/// the count is odd).
pub fn to_words(src: &[f32], dst: &mut Vec<u32>) {
    assert!(available(), "bf16 conversion needs AVX512_BF16");
    dst.resize(src.len().div_ceil(2), 0);
    // SAFETY: available() holds; dst holds src's values, two a word.
    unsafe { convert_row(src, dst) }
}

/// The bf16 values of `words`, two a word, the lower half first (as `vdpbf16ps` and x86's
/// byte order have it).
pub fn halves(words: &[u32]) -> &[u16] {
    // SAFETY: the same memory, as twice as many u16 (alignment 2 <= 4; every bit pattern is a
    // u16).
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast(), 2 * words.len()) }
}

/// [`halves`], writable.
pub fn halves_mut(words: &mut [u32]) -> &mut [u16] {
    // SAFETY: as in `halves`; the borrow is exclusive.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), 2 * words.len()) }
}

/// A `k x n` right-hand side rounded to bf16 and packed for the kernel:
/// `words[(panel * pairs + p) * NR + j]` holds rows `2p` and `2p + 1` of column
/// `panel * NR + j` (zero past the matrix).
#[derive(Default)]
pub struct Packed {
    k: usize,
    n: usize,
    words: Vec<u32>,
}

impl Packed {
    /// Packs the `k x n` matrix whose element (r, c) is `src[r * rs + c * cs]`.
    pub fn new(k: usize, n: usize, src: &[f32], strides: (usize, usize)) -> Packed {
        let mut packed = Packed::default();
        packed.pack(k, n, src, strides);
        packed
    }

    /// As [`Packed::new`], reusing this one's memory.
    pub fn pack(&mut self, k: usize, n: usize, src: &[f32], (rs, cs): (usize, usize)) {
        assert!(available(), "bf16 products need AVX512_BF16");
        if k > 0 && n > 0 {
            assert!(
                (k - 1) * rs + (n - 1) * cs < src.len(),
                "the matrix is in bounds"
            );
        }
        let pairs = k.div_ceil(2);
        (self.k, self.n) = (k, n);
        self.words.clear();
        self.words.resize(n.div_ceil(NR) * pairs * NR, 0);
        for (panel, words) in self.words.chunks_exact_mut(pairs * NR).enumerate() {
            let c0 = panel * NR;
            let cols = NR.min(n - c0);
            for (p, words) in words.chunks_exact_mut(NR).enumerate() {
                let (r0, r1) = (2 * p, 2 * p + 1);
                if cs == 1 {
                    let lo = &src[r0 * rs + c0..][..cols];
                    let hi = (r1 < k).then(|| &src[r1 * rs + c0..][..cols]);
                    // SAFETY: `available()` was checked above; the rows hold `cols` values and
                    // `words` NR >= cols.
                    unsafe { interleave(lo, hi, words) };
                } else {
                    for (j, w) in words.iter_mut().enumerate().take(cols) {
                        let at = |r: usize| src[r * rs + (c0 + j) * cs];
                        let hi = if r1 < k { to_bf16(at(r1)) } else { 0 };
                        *w = u32::from(to_bf16(at(r0))) | (u32::from(hi) << 16);
                    }
                }
            }
        }
    }
}

/// `words[j] = (lo[j], hi[j])` as bf16, `hi` zero when absent.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn interleave(lo: &[f32], hi: Option<&[f32]>, words: &mut [u32]) {
    use std::arch::x86_64::*;
    // Element 2j of the result is lo[j] (element j of the conversion), 2j + 1 is hi[j] (16 + j).
    let index = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
        19, 3, 18, 2, 17, 1, 16, 0,
    );
    for c in (0..lo.len()).step_by(16) {
        let count = (lo.len() - c).min(16);
        let mask: __mmask16 = ((1u32 << count) - 1) as __mmask16;
        // SAFETY: the masked lanes are the `count` values at c of each row; `words` has 16
        // words at c (it holds NR >= lo.len() rounded up to 16).
        unsafe {
            let l = _mm512_maskz_loadu_ps(mask, lo.as_ptr().add(c));
            let h = match hi {
                Some(hi) => _mm512_maskz_loadu_ps(mask, hi.as_ptr().add(c)),
                None => _mm512_setzero_ps(),
            };
            let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(h, l));
            _mm512_storeu_si512(
                words.as_mut_ptr().add(c).cast(),
                _mm512_permutexvar_epi16(index, both),
            );
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn interleave(_: &[f32], _: Option<&[f32]>, _: &mut [u32]) {
    unreachable!("available() is false off x86_64")
}

// The left-hand side of the running product, as bf16 rows (two per word).
thread_local! {
    static LHS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// `dst = lhs · rhs`, or `dst += lhs · rhs` when `accumulate`: `m x n` (row stride `drs`) from
/// row-major `lhs` (`m x k`, row r at `lhs[r * lrs..]`) and `rhs` (`k x n`, packed).
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    m: usize,
    dst: &mut [f32],
    drs: usize,
    accumulate: bool,
    lhs: &[f32],
    lrs: usize,
    rhs: &Packed,
    (k, n): (usize, usize),
    parallelism: Parallelism,
) {
    assert_eq!(
        (k, n),
        (rhs.k, rhs.n),
        "the packed right-hand side is k x n"
    );
    if m == 0 || n == 0 || k == 0 {
        return matmul_rows(m, dst, drs, accumulate, &[], rhs, parallelism);
    }
    assert!((m - 1) * lrs + k <= lhs.len(), "lhs holds m x k");
    // Taken out of the thread's slot while in use: a thread that waits for parallel work may
    // run another product meanwhile, which then gets a buffer of its own.
    let mut a = LHS.take();
    convert(m, k, lhs, lrs, &mut a, tasks(m, parallelism) > 1);
    matmul_rows(m, dst, drs, accumulate, &a, rhs, parallelism);
    LHS.set(a);
}

/// Whole micro-tiles per task, a few tasks per thread.
fn tasks(m: usize, parallelism: Parallelism) -> usize {
    match parallelism {
        Parallelism::Rayon(t) if t > 1 => (m.div_ceil(MR)).min(4 * t),
        _ => 1,
    }
}

/// As [`matmul`], from a left-hand side already in bf16 rows: `a` holds `m` rounded up to
/// whole micro-tiles ([`MR`]) rows of `k.div_ceil(2)` words, row r's k-pair p in word
/// `r * pairs + p` (the rows past `m` are read, whatever they hold, and their sums dropped).
pub fn matmul_rows(
    m: usize,
    dst: &mut [f32],
    drs: usize,
    accumulate: bool,
    a: &[u32],
    rhs: &Packed,
    parallelism: Parallelism,
) {
    let pairs = rhs.k.div_ceil(2);
    if m == 0 || rhs.n == 0 {
        return;
    }
    assert!(
        (m - 1) * drs + rhs.n <= dst.len() && rhs.n <= drs,
        "dst holds m x n"
    );
    if pairs == 0 {
        if !accumulate {
            dst.chunks_mut(drs)
                .take(m)
                .for_each(|r| r[..rhs.n].fill(0.0));
        }
        return;
    }
    assert!(
        a.len() >= m.next_multiple_of(MR) * pairs,
        "a holds whole micro-tiles of rows"
    );
    let tasks = tasks(m, parallelism);
    let rows = m.div_ceil(tasks).div_ceil(MR) * MR;
    let run = |(task, dst): (usize, &mut [f32])| {
        let r0 = task * rows;
        let count = rows.min(m - r0);
        let a = &a[r0 * pairs..][..count.div_ceil(MR) * MR * pairs];
        block(count, pairs, a, rhs, dst, drs, accumulate);
    };
    if tasks == 1 {
        run((0, dst));
    } else {
        dst.par_chunks_mut(rows * drs).enumerate().for_each(run);
    }
}

/// The product for `m` rows of converted `a` (padded to whole micro-tiles) into `dst`.
fn block(m: usize, pairs: usize, a: &[u32], rhs: &Packed, dst: &mut [f32], drs: usize, add: bool) {
    let n = rhs.n;
    for p0 in (0..pairs).step_by(KP) {
        let kp = KP.min(pairs - p0);
        for r0 in (0..m).step_by(MR) {
            let rows = MR.min(m - r0);
            for (panel, b) in rhs.words.chunks_exact(pairs * NR).enumerate() {
                let c0 = panel * NR;
                let cols = NR.min(n - c0);
                let tile = Tile {
                    a: &a[r0 * pairs + p0..],
                    a_stride: pairs,
                    b: &b[p0 * NR..][..kp * NR],
                    kp,
                    rows,
                    cols,
                    add: add || p0 > 0,
                };
                let out = &mut dst[r0 * drs + c0..];
                // A last, partial micro-tile runs the kernel for its rows in multiples of 4 (a
                // 7 x 7 map's 16 Winograd tiles are 12 + 4 rows, not 24).
                let rows_run = rows.next_multiple_of(4);
                assert!(
                    (rows - 1) * drs + cols <= out.len() && tile.a.len() > (rows_run - 1) * pairs
                );
                // SAFETY: available() holds (Packed::pack checked it); the asserts above bound
                // every read of `a` and `b` and every write of `out`.
                unsafe {
                    match rows_run {
                        4 => kernel::<4>(&tile, out.as_mut_ptr(), drs),
                        8 => kernel::<8>(&tile, out.as_mut_ptr(), drs),
                        _ => kernel::<MR>(&tile, out.as_mut_ptr(), drs),
                    }
                }
            }
        }
    }
}

/// One micro-tile's operands: up to `MR` rows of `a` (as many as the kernel runs, `rows`
/// rounded up to 4) words `kp` long at stride `a_stride`, the panel's `kp` rows of `NR` words,
/// and how much of the tile is inside the matrix.
struct Tile<'a> {
    a: &'a [u32],
    a_stride: usize,
    b: &'a [u32],
    kp: usize,
    rows: usize,
    cols: usize,
    add: bool,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel<const R: usize>(t: &Tile, out: *mut f32, drs: usize) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    let (a, b) = (t.a.as_ptr(), t.b.as_ptr());
    for p in 0..t.kp {
        // SAFETY: p < kp, and the tile holds kp rows of NR words of b and R rows of a.
        let (b0, b1): (__m512bh, __m512bh) = unsafe {
            (
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(b.add(p * NR).cast())),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                    b.add(p * NR + 16).cast(),
                )),
            )
        };
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: as above.
            let w = unsafe { *a.add(i * t.a_stride + p) };
            // SAFETY: a vector of 32 bf16 is a vector of 16 words.
            let ai: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi32(w as i32)) };
            acc[0] = _mm512_dpbf16_ps(acc[0], ai, b0);
            acc[1] = _mm512_dpbf16_ps(acc[1], ai, b1);
        }
    }
    for (i, acc) in acc.iter().enumerate().take(t.rows) {
        for (half, v) in acc.iter().enumerate() {
            let c0 = half * 16;
            if c0 >= t.cols {
                break;
            }
            let mask = ((1u32 << (t.cols - c0).min(16)) - 1) as __mmask16;
            // SAFETY: row i < rows and the masked lanes are the columns < cols of that row.
            unsafe {
                let ptr = out.add(i * drs + c0);
                let v = if t.add {
                    _mm512_add_ps(_mm512_maskz_loadu_ps(mask, ptr), *v)
                } else {
                    *v
                };
                _mm512_mask_storeu_ps(ptr, mask, v);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel<const R: usize>(_: &Tile, _: *mut f32, _: usize) {
    unreachable!("available() is false off x86_64")
}

/// Row-major `lhs` (row r at `lhs[r * rs..]`) as bf16 rows into `a`: row r's k-pair p in word
/// `r * pairs + p`, the rows padded with zeros to whole micro-tiles and each row to whole
/// pairs.
fn convert(m: usize, k: usize, lhs: &[f32], rs: usize, a: &mut Vec<u32>, parallel: bool) {
    let pairs = k.div_ceil(2);
    let padded = m.div_ceil(MR) * MR;
    // Every word is written below: resizing only grows.
    a.resize(padded * pairs, 0);
    let a = &mut a[..padded * pairs];
    a[m * pairs..].fill(0);
    // SAFETY: available() holds (the packed right-hand side checked it); each row of lhs
    // holds k values and each row of a `pairs` words.
    let row = |(r, row): (usize, &mut [u32])| unsafe { convert_row(&lhs[r * rs..][..k], row) };
    let rows = &mut a[..m * pairs];
    if parallel {
        rows.par_chunks_mut(pairs).enumerate().for_each(row);
    } else {
        rows.chunks_mut(pairs).enumerate().for_each(row);
    }
}

/// One contiguous row of `k` values into `pairs` words (the last one zero-padded).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn convert_row(src: &[f32], dst: &mut [u32]) {
    use std::arch::x86_64::*;
    let k = src.len();
    if k % 2 == 1 {
        dst[k / 2] = 0;
    }
    let out: *mut u16 = dst.as_mut_ptr().cast();
    for c in (0..k).step_by(16) {
        let count = (k - c).min(16);
        let mask: __mmask16 = ((1u32 << count) - 1) as __mmask16;
        // SAFETY: the masked lanes are the `count` values at c of the row, whose bf16 copies
        // fit in dst (2 * pairs >= k).
        unsafe {
            let v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, src.as_ptr().add(c)));
            _mm256_mask_storeu_epi16(
                out.add(c).cast(),
                mask,
                std::mem::transmute::<__m256bh, __m256i>(v),
            );
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn convert_row(_: &[f32], _: &mut [u32]) {
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
    /// of any tile or block, in every layout the callers use, overwriting and accumulating,
    /// on one thread and split across threads.
    #[test]
    fn products_match_the_rounded_definition() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512_BF16");
            return;
        }
        let mut next = crate::model::fused::tests::values(7);
        let round = |x: f32| f64::from(f32::from_bits(u32::from(to_bf16(x)) << 16));
        let cases = [
            (1, 1, 1),
            (13, 33, 7),
            (25, 17, 515),
            (40, 64, 600),
            (7, 70, 2),
        ];
        for (m, n, k) in cases {
            for (transposed, accumulate, par) in [
                (false, false, Parallelism::None),
                (true, true, Parallelism::None),
                (false, true, Parallelism::Rayon(2)),
                (true, false, Parallelism::Rayon(2)),
            ] {
                let a: Vec<f32> = (0..m * k).map(|_| next()).collect();
                let b: Vec<f32> = (0..k * n).map(|_| next()).collect();
                let drs = n + 3;
                let start: Vec<f32> = (0..m * drs).map(|_| next()).collect();
                let mut out = start.clone();
                // Transposed: rhs stored as n x k (the packing's strided path).
                let (rhs, rs) = if transposed {
                    let rhs: Vec<f32> = (0..n)
                        .flat_map(|c| b.iter().skip(c).step_by(n).copied())
                        .collect();
                    (rhs, (1, k))
                } else {
                    (b.clone(), (n, 1))
                };
                let packed = Packed::new(k, n, &rhs, rs);
                matmul(m, &mut out, drs, accumulate, &a, k, &packed, (k, n), par);
                for r in 0..m {
                    for c in 0..drs {
                        let got = f64::from(out[r * drs + c]);
                        if c >= n {
                            assert_eq!(got, f64::from(start[r * drs + c]), "outside the product");
                            continue;
                        }
                        let base = if accumulate {
                            f64::from(start[r * drs + c])
                        } else {
                            0.0
                        };
                        let exact: f64 = base
                            + (0..k)
                                .map(|i| round(a[r * k + i]) * round(b[i * n + c]))
                                .sum::<f64>();
                        assert!(
                            (got - exact).abs() < 1e-5 * (k as f64).sqrt().max(1.0),
                            "({m}, {n}, {k}, {transposed}, {accumulate}) at ({r}, {c}): {got} vs {exact}"
                        );
                    }
                }
            }
        }
    }
}
