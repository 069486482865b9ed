//! The matrix products of the CPU kernels, in the precision the network was prepared for:
//! f32 through the gemm crate, or bf16 operands with f32 sums ([`super::bf16`]).

use gemm::Parallelism;
use rayon::prelude::*;

use super::bf16::{self, Packed};
use crate::model::Precision;

/// A product's right-hand side `k x n`, in the form its precision reads.
#[derive(Clone, Copy)]
pub enum Rhs<'a> {
    /// Element (r, c) at `data[r * rs + c * cs]`.
    F32 {
        data: &'a [f32],
        strides: (usize, usize),
    },
    Bf16(&'a Packed),
}

impl<'a> Rhs<'a> {
    /// A row-major `k x n` f32 matrix.
    pub fn rows(data: &'a [f32], n: usize) -> Self {
        Rhs::F32 {
            data,
            strides: (n, 1),
        }
    }
}

/// `dst = lhs · rhs` (or `dst += lhs · rhs` when `accumulate`), `m x n` with row stride `drs`
/// from `lhs` `m x k` (element (r, i) at `lhs[r * lrs + i * lcs]`) and `rhs` `k x n`.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    drs: usize,
    accumulate: bool,
    lhs: &[f32],
    (lrs, lcs): (usize, usize),
    rhs: Rhs,
    parallelism: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(last(m, n, drs, 1) < dst.len());
    let (data, (rrs, rcs)) = match rhs {
        Rhs::Bf16(packed) => {
            assert_eq!(lcs, 1, "bf16 products read row-major left-hand sides");
            return bf16::matmul(
                m,
                dst,
                drs,
                accumulate,
                lhs,
                lrs,
                packed,
                (k, n),
                parallelism,
            );
        }
        Rhs::F32 { data, strides } => (data, strides),
    };
    if k > 0 {
        assert!(last(m, k, lrs, lcs) < lhs.len() && last(k, n, rrs, rcs) < data.len());
    }
    // SAFETY: every element each matrix addresses is in bounds (checked above); dst is
    // exclusively borrowed, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            drs as isize,
            accumulate,
            lhs.as_ptr(),
            lcs as isize,
            lrs as isize,
            data.as_ptr(),
            rcs as isize,
            rrs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// `count` right-hand sides `k x n` that products read many times (a layer's weights): their
/// f32 values, row-major one after the other, and for bf16 the same packed once.
pub struct Weights {
    precision: Precision,
    k: usize,
    n: usize,
    values: Vec<f32>,
    packed: Vec<Packed>,
}

impl Weights {
    pub fn new(precision: Precision) -> Self {
        Weights {
            precision,
            k: 0,
            n: 0,
            values: Vec::new(),
            packed: Vec::new(),
        }
    }

    /// Sets the values with `fill` (which gets this one's buffer, to reuse its memory, and
    /// leaves `count * k * n` values in it), then packs them for bf16.
    pub fn set(&mut self, (count, k, n): (usize, usize, usize), fill: impl FnOnce(&mut Vec<f32>)) {
        fill(&mut self.values);
        assert_eq!(self.values.len(), count * k * n, "count matrices k x n");
        (self.k, self.n) = (k, n);
        if self.precision == Precision::Bf16 && k * n > 0 {
            self.packed.resize_with(count, Packed::default);
            let values = self.values.par_chunks_exact(k * n);
            self.packed
                .par_iter_mut()
                .zip(values)
                .for_each(|(p, m)| p.pack(k, n, m, (n, 1)));
        }
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The f32 values, `[count][k][n]`.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// Matrix `i`, in the form this precision's products read.
    pub fn get(&self, i: usize) -> Rhs<'_> {
        match self.precision {
            Precision::Fp32 => Rhs::rows(
                &self.values[i * self.k * self.n..][..self.k * self.n],
                self.n,
            ),
            Precision::Bf16 => Rhs::Bf16(&self.packed[i]),
        }
    }
}
