//! Adam as `torch.optim.Adam` computes it (and with a weight decay, `torch.optim.AdamW`'s
//! decoupled decay), with its state keyed by parameter
//! name (`layer1.0.conv1.weight`). burn's own optimizer keys its state by
//! in-memory parameter ids, which a model reloaded from safetensors does not
//! keep; keyed by name, the state saves to safetensors beside the model and a
//! resumed run continues exactly where it stopped.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::error::{Error, Result};
use crate::fsio;

pub struct Adam {
    /// The head's rate at the next step (a schedule sets it before each).
    pub lr: f64,
    /// The backbone's rate relative to the head's (`--lr-backbone` / `--lr`; 1: the same).
    pub backbone_scale: f64,
    /// AdamW's decoupled decay: each step first multiplies a parameter by `1 - rate * decay`.
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Steps taken; every trainable parameter gets a gradient every step, so
    /// one counter serves them all (PyTorch keeps one per parameter).
    pub step: u64,
    /// First and second moments, flattened, by parameter name.
    moments: BTreeMap<String, Moments>,
}

/// A parameter's first and second moments: on the device of burn's path, or in memory for
/// catdog's own CPU training pass. Each path takes them in the form it needs.
// Boxing the tensors would cost an allocation per parameter for a map of a few dozen entries.
#[allow(clippy::large_enum_variant)]
enum Moments {
    Device(Tensor<1>, Tensor<1>),
    Host(Vec<f32>, Vec<f32>),
}

impl Moments {
    fn into_device(self, device: &Device) -> (Tensor<1>, Tensor<1>) {
        let tensor = |v: Vec<f32>| {
            let n = v.len();
            Tensor::from_data(TensorData::new(v, [n]), device)
        };
        match self {
            Moments::Device(m, v) => (m.to_device(device), v.to_device(device)),
            Moments::Host(m, v) => (tensor(m), tensor(v)),
        }
    }

    fn into_host(self) -> (Vec<f32>, Vec<f32>) {
        let values = |t: Tensor<1>| {
            t.into_data()
                .try_into_vec::<f32>()
                .expect("Adam moments are f32")
        };
        match self {
            Moments::Device(m, v) => (values(m), values(v)),
            Moments::Host(m, v) => (m, v),
        }
    }

    fn host(&self) -> (Vec<f32>, Vec<f32>) {
        match self {
            Moments::Device(m, v) => Moments::Device(m.clone(), v.clone()).into_host(),
            Moments::Host(m, v) => (m.clone(), v.clone()),
        }
    }
}

impl Adam {
    /// PyTorch's defaults (betas 0.9, 0.999; eps 1e-8; burn's default eps is 1e-5).
    pub fn new(lr: f64) -> Self {
        Adam {
            lr,
            backbone_scale: 1.0,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: 0,
            moments: BTreeMap::new(),
        }
    }

    /// The rate of the parameter `name`: the head's (`fc.*`) or the backbone's.
    fn rate(&self, name: &str) -> f64 {
        if name.starts_with("fc.") {
            self.lr
        } else {
            self.lr * self.backbone_scale
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

    /// One update of each slice `value` by its gradient `grad`, on the CPU, with the same
    /// arithmetic as [`Adam::step`].
    pub fn step_slices<'a>(
        &mut self,
        params: impl IntoIterator<Item = (&'a str, &'a mut [f32], &'a [f32])>,
    ) {
        self.step += 1;
        let t = self.step as i32;
        let b1 = self.beta1 as f32;
        let b2 = self.beta2 as f32;
        let bias2_sqrt = (1.0 - self.beta2.powi(t)).sqrt() as f32;
        let eps = self.eps as f32;
        for (name, value, grad) in params {
            let rate = self.rate(name);
            let step_size = (-rate / (1.0 - self.beta1.powi(t))) as f32;
            let decay = (1.0 - rate * self.weight_decay) as f32;
            let (mut m, mut v) = match self.moments.remove(name) {
                Some(moments) => moments.into_host(),
                None => (vec![0.0; grad.len()], vec![0.0; grad.len()]),
            };
            const CHUNK: usize = 1 << 14;
            value
                .par_chunks_mut(CHUNK)
                .zip(grad.par_chunks(CHUNK))
                .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
                .for_each(|((p, g), (m, v))| {
                    for i in 0..p.len() {
                        let g = g[i];
                        // AdamW decays before the update, as PyTorch does; 1.0 leaves Adam.
                        p[i] *= decay;
                        m[i] += (g - m[i]) * (1.0 - b1);
                        v[i] = v[i] * b2 + g * g * (1.0 - b2);
                        let denom = v[i].sqrt() / bias2_sqrt + eps;
                        p[i] += m[i] / denom * step_size;
                    }
                });
            self.moments.insert(name.to_owned(), Moments::Host(m, v));
        }
    }

    /// Writes the moments and the step count as safetensors (atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut buffers: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, moments) in &self.moments {
            let (m, v) = moments.host();
            for (suffix, values) in [("exp_avg", m), ("exp_avg_sq", v)] {
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

    /// Reads a state written by [`Adam::save`].
    pub fn load(path: &Path) -> Result<Adam> {
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
        let mut halves: BTreeMap<String, [Option<Vec<f32>>; 2]> = BTreeMap::new();
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
            halves.entry(param.to_owned()).or_default()[slot] = Some(values);
        }
        let mut moments = BTreeMap::new();
        for (name, [m, v]) in halves {
            let (Some(m), Some(v)) = (m, v) else {
                return Err(bad(format!("{name} lacks one of its two moments")));
            };
            moments.insert(name, Moments::Host(m, v));
        }
        Ok(Adam {
            lr,
            backbone_scale: 1.0,
            weight_decay: 0.0,
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
        let rate = a.rate(&name);
        let (m, v) = match a.moments.remove(&name) {
            Some(moments) => moments.into_device(&g.device()),
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
        let update = m.clone().div(denom).mul_scalar(-rate / bias1);
        let mut value = value.reshape([n]);
        if a.weight_decay != 0.0 {
            value = value.mul_scalar(1.0 - rate * a.weight_decay);
        }
        let value = value.add(update).reshape(shape);
        a.moments.insert(name, Moments::Device(m, v));
        let mut updated = Tensor::from_inner(value);
        if require_grad {
            updated = updated.require_grad();
        }
        Param::from_mapped_value(id, updated, mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec().expect("f32")
    }

    /// The CPU pass's update and burn's, two steps each on the same gradients, agree to float
    /// rounding (burn's scalar operations round in their own order: a unit in the last place),
    /// with a weight decay and a backbone rate of its own (neither parameter is the head's).
    #[test]
    fn slice_updates_equal_burns() {
        let device = Device::flex().autodiff();
        device.seed(3);
        let mut layer: Linear = LinearConfig::new(5, 3).init(&device);
        let mut weight = values(layer.weight.val());
        let mut bias = values(layer.bias.as_ref().expect("bias").val());
        let optimizer = || Adam {
            weight_decay: 0.3,
            backbone_scale: 0.5,
            ..Adam::new(1e-3)
        };
        let (mut on_burn, mut on_slices) = (optimizer(), optimizer());
        for step in 0..2 {
            let x = Tensor::<2>::from_data(
                TensorData::new(
                    (0..10)
                        .map(|i| (i * (step + 2)) as f32 * 0.1 - 0.4)
                        .collect::<Vec<_>>(),
                    [2, 5],
                ),
                &device,
            );
            let grads = layer.forward(x).powi_scalar(2).sum().backward();
            let gw = values(layer.weight.val().grad(&grads).expect("weight grad"));
            let gb = values(
                layer
                    .bias
                    .as_ref()
                    .expect("bias")
                    .val()
                    .grad(&grads)
                    .expect("bias grad"),
            );
            let grads = GradientsParams::from_grads(grads, &layer);
            layer = on_burn.step(layer, grads);
            on_slices.step_slices([
                ("weight", &mut weight[..], &gw[..]),
                ("bias", &mut bias[..], &gb[..]),
            ]);
            let burn_bias = values(layer.bias.as_ref().expect("bias").val());
            for (theirs, ours) in [(values(layer.weight.val()), &weight), (burn_bias, &bias)] {
                for (t, o) in theirs.iter().zip(ours.iter()) {
                    // Each step moves a value by about lr = 1e-3.
                    assert!((t - o).abs() <= 1e-6, "step {step}: {t} vs {o}");
                }
            }
        }
    }
}
