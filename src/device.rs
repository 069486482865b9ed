//! Choosing where the network runs. The Flex CPU backend is always there; GPU
//! backends exist when catdog is built with the `cuda` or `wgpu` feature.

use std::fmt;
use std::str::FromStr;

use burn::prelude::Device;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// A `--device` value: `cpu`, `cuda`, `cuda:N` or `wgpu`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceChoice {
    #[default]
    Cpu,
    Cuda(usize),
    Wgpu,
}

impl DeviceChoice {
    pub fn is_cpu(self) -> bool {
        self == DeviceChoice::Cpu
    }

    /// The burn device, or an error saying how to build catdog for it.
    pub fn device(self) -> Result<Device, Error> {
        match self {
            DeviceChoice::Cpu => Ok(Device::flex()),
            #[cfg(feature = "cuda")]
            DeviceChoice::Cuda(i) => Ok(Device::cuda(i)),
            #[cfg(feature = "wgpu")]
            DeviceChoice::Wgpu => Ok(Device::wgpu(Default::default())),
            #[allow(unreachable_patterns)]
            other => Err(Error::setting(
                "--device",
                format!(
                    "this catdog was built without {other} support; rebuild with `cargo build --release --features {}`",
                    other.feature()
                ),
            )),
        }
    }

    fn feature(self) -> &'static str {
        match self {
            DeviceChoice::Cpu => "",
            DeviceChoice::Cuda(_) => "cuda",
            DeviceChoice::Wgpu => "wgpu",
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(i) => write!(f, "cuda:{i}"),
            DeviceChoice::Wgpu => f.write_str("wgpu"),
        }
    }
}

impl FromStr for DeviceChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            "wgpu" => Ok(DeviceChoice::Wgpu),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| {
                    Error::setting(
                        "--device",
                        format!("'{s}' is not one of cpu, cuda, cuda:N, wgpu"),
                    )
                }),
        }
    }
}

impl TryFrom<String> for DeviceChoice {
    type Error = Error;

    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<DeviceChoice> for String {
    fn from(d: DeviceChoice) -> String {
        d.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_explains_missing_backends() {
        assert_eq!(
            "cuda:1".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(1)
        );
        assert!(
            "tpu"
                .parse::<DeviceChoice>()
                .unwrap_err()
                .to_string()
                .contains("--device")
        );
        assert!(DeviceChoice::Cpu.device().is_ok());
        #[cfg(not(feature = "cuda"))]
        assert!(
            DeviceChoice::Cuda(0)
                .device()
                .unwrap_err()
                .to_string()
                .contains("--features cuda")
        );
    }
}
