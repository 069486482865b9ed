//! The arithmetic of the CPU kernels' matrix products.

use serde::{Deserialize, Serialize};

use super::fused::bf16;

/// A `--precision` value. `Bf16` rounds the operands of every matrix product to bf16 and sums
/// in f32, as PyTorch's CPU autocast does; everything else (weights, optimizer state,
/// batch-norm statistics, loss) stays f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
}

crate::error::named_choice!(Precision, "--precision", Precision::Fp32 => "fp32", Precision::Bf16 => "bf16");

impl Precision {
    /// What this CPU runs when asked for `self`: bf16 needs AVX512_BF16, and without it the
    /// products run in f32.
    pub fn on_this_cpu(self) -> Precision {
        match self {
            Precision::Bf16 if !bf16::available() => Precision::Fp32,
            p => p,
        }
    }
}
