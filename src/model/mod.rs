//! The network: torchvision's ResNet-18 in burn, its weight files and catdog's checkpoints.
//!
//! - [`ResNet18`]: the model, parameter for parameter torchvision's `resnet18`, so its weight
//!   files load by name; forward, pooled features, replaceable head, frozen backbone.
//! - [`weights`]: where the ImageNet weights live (`--weights auto|PATH|none`) and loading
//!   `.pth` / `.safetensors` files with a clear error for a wrong one.
//! - [`download`]: fetching them (checksum-verified, atomic).
//! - [`checkpoint`]: catdog's own trained models (`model.safetensors` + `model.json`).
//! - [`eval_net`]: a trained network ready for eval-mode passes on its device.
//! - [`fused`]: the eval-mode forward pass on the CPU with batch norm folded in, catdog's own
//!   kernels (faster than the same network through burn's generic operations).
//! - [`calibration`]: from outputs to a decision (a class, `unsure`, `neither`) with
//!   calibrated probabilities.
//! - [`predict`]: ranked class probabilities for preprocessed images.
//! - [`gradcam`]: Grad-CAM heat maps, which parts of an image drove a class's score.
//! - [`onnx`]: `catdog export`, a trained model as an ONNX file for other runtimes, each
//!   module adding its own nodes ([`onnx::ToOnnx`]).
//! - [`imagenet_classes`]: the 1000 ImageNet class names.

mod batch_norm;
pub mod calibration;
pub mod checkpoint;
pub mod download;
pub mod eval_net;
pub mod fused;
pub mod gradcam;
pub mod imagenet_classes;
pub mod onnx;
pub mod precision;
pub mod predict;
mod resnet;
pub mod weights;

pub use batch_norm::BatchNorm2d;
pub use eval_net::EvalNet;
pub use precision::Precision;
pub use resnet::{BasicBlock, FEATURES, MaxPool, ResNet18};
