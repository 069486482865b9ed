//! Adam as `torch.optim.Adam` computes it, with its state keyed by parameter
//! name (`layer1.0.conv1.weight`). burn's own optimizer keys its state by
//! in-memory parameter ids, which a model reloaded from safetensors does not
//! keep; keyed by name, the state saves to safetensors beside the model and a
//! resumed run continues exactly where it stopped.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::error::{Error, Result};
use crate::fsio;

pub struct Adam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Steps taken; every trainable parameter gets a gradient every step, so
    /// one counter serves them all (PyTorch keeps one per parameter).
    pub step: u64,
    /// First and second moments, flattened, by parameter name.
    moments: BTreeMap<String, (Tensor<1>, Tensor<1>)>,
}

impl Adam {
    /// PyTorch's defaults (betas 0.9, 0.999; eps 1e-8; burn's default eps is 1e-5).
    pub fn new(lr: f64) -> Self {
        Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: 0,
            moments: BTreeMap::new(),
        }
    }

    /// One update of every parameter that has a gradient in `grads`.
    pub fn step<M: Module>(&mut self, model: M, grads: GradientsParams) -> M {
        self.step += 1;
        let mut mapper = Mapper {
            adam: self,
            grads,
            path: Vec::new(),
        };
        model.map(&mut mapper)
    }

    /// Writes the moments and the step count as safetensors (atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut buffers: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, (m, v)) in &self.moments {
            for (suffix, t) in [("exp_avg", m), ("exp_avg_sq", v)] {
                let data = t.to_data();
                let values = data.try_to_vec::<f32>().expect("Adam moments are f32");
                let bytes = values.iter().flat_map(|x| x.to_le_bytes()).collect();
                buffers.push((format!("{name}.{suffix}"), vec![values.len()], bytes));
            }
        }
        let views: Vec<(String, TensorView<'_>)> = buffers
            .iter()
            .map(|(n, shape, bytes)| {
                (
                    n.clone(),
                    TensorView::new(Dtype::F32, shape.clone(), bytes).expect("sizes match"),
                )
            })
            .collect();
        let meta = HashMap::from([
            ("step".to_owned(), self.step.to_string()),
            ("lr".to_owned(), self.lr.to_string()),
            ("betas".to_owned(), format!("{},{}", self.beta1, self.beta2)),
            ("eps".to_owned(), self.eps.to_string()),
        ]);
        let bytes = safetensors::serialize(views, Some(meta)).expect("valid tensors serialise");
        fsio::write_atomic(path, &bytes)
    }

    /// Reads a state written by [`Adam::save`], onto `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Adam> {
        let bad = |problem: String| {
            Error::data(
                path,
                problem,
                "the run's last/ checkpoint is damaged; start the run again",
            )
        };
        let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read", path, e))?;
        let (_, meta) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let get = |k: &str| {
            meta.get(k)
                .and_then(|v| v.split(',').next())
                .and_then(|v| v.parse::<f64>().ok())
        };
        let (Some(step), Some(lr), Some(eps)) = (
            meta.get("step").and_then(|s| s.parse().ok()),
            get("lr"),
            get("eps"),
        ) else {
            return Err(bad("optimizer metadata (step, lr, eps) missing".into()));
        };
        let betas: Vec<f64> = meta
            .get("betas")
            .map(|b| b.split(',').filter_map(|x| x.parse().ok()).collect())
            .unwrap_or_default();
        let [beta1, beta2] = betas[..] else {
            return Err(bad("optimizer metadata 'betas' missing".into()));
        };
        let tensors = SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
        let mut halves: BTreeMap<String, [Option<Tensor<1>>; 2]> = BTreeMap::new();
        for (name, view) in tensors.tensors() {
            let (param, slot) = if let Some(p) = name.strip_suffix(".exp_avg_sq") {
                (p, 1)
            } else if let Some(p) = name.strip_suffix(".exp_avg") {
                (p, 0)
            } else {
                return Err(bad(format!("unexpected tensor {name}")));
            };
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect();
            let n = values.len();
            halves.entry(param.to_owned()).or_default()[slot] =
                Some(Tensor::from_data(TensorData::new(values, [n]), device));
        }
        let mut moments = BTreeMap::new();
        for (name, [m, v]) in halves {
            let (Some(m), Some(v)) = (m, v) else {
                return Err(bad(format!("{name} lacks one of its two moments")));
            };
            moments.insert(name, (m, v));
        }
        Ok(Adam {
            lr,
            beta1,
            beta2,
            eps,
            step,
            moments,
        })
    }
}

struct Mapper<'a> {
    adam: &'a mut Adam,
    grads: GradientsParams,
    path: Vec<String>,
}

impl ModuleMapper for Mapper<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let require_grad = tensor.is_require_grad();
        let value = tensor.inner();
        let shape = value.shape();
        let n = shape.num_elements();
        let a = &mut *self.adam;
        let g = grad.reshape([n]);
        let name = self.path.join(".");
        let (m, v) = match a.moments.remove(&name) {
            Some((m, v)) => (m.to_device(&g.device()), v.to_device(&g.device())),
            None => (g.zeros_like(), g.zeros_like()),
        };
        // The same operations, in the same order, as torch.optim.Adam's single-tensor path.
        let m = m.clone().add(g.clone().sub(m).mul_scalar(1.0 - a.beta1));
        let v = v
            .mul_scalar(a.beta2)
            .add(g.clone().mul(g).mul_scalar(1.0 - a.beta2));
        let t = a.step as i32;
        let bias1 = 1.0 - a.beta1.powi(t);
        let bias2 = 1.0 - a.beta2.powi(t);
        let denom = v.clone().sqrt().div_scalar(bias2.sqrt()).add_scalar(a.eps);
        let update = m.clone().div(denom).mul_scalar(-a.lr / bias1);
        let value = value.reshape([n]).add(update).reshape(shape);
        a.moments.insert(name, (m, v));
        let mut updated = Tensor::from_inner(value);
        if require_grad {
            updated = updated.require_grad();
        }
        Param::from_mapped_value(id, updated, mapper)
    }
}
