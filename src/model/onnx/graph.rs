//! Building an ONNX graph from the network's own modules: [`GraphBuilder`] holds the nodes and
//! weights, and each module appends its eval-mode computation through [`ToOnnx`]. A new
//! architecture built from these modules exports by implementing [`ToOnnx`] for its top level
//! only.

use burn::nn::conv::Conv2d;
use burn::nn::{Linear, PaddingConfig2d};
use burn::tensor::Tensor;

use super::proto::{AttributeProto, NodeProto, TensorProto, attribute_type, data_type};
use crate::model::fused::fold_batch_norm;
use crate::model::{BasicBlock, BatchNorm2d, MaxPool, ResNet18};

/// An operator attribute's value.
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
    Str(&'static str),
}

/// The nodes and constant tensors of a graph being built, in the order they were added (a
/// topological order, as ONNX requires). Each node's single output is named as the node is.
#[derive(Default)]
pub struct GraphBuilder {
    pub(super) nodes: Vec<NodeProto>,
    pub(super) initializers: Vec<TensorProto>,
}

impl GraphBuilder {
    /// Appends `op_type` reading `inputs` (`""` for an optional input left out); returns the
    /// name of its output, which is `name`.
    pub fn op(
        &mut self,
        op_type: &str,
        name: &str,
        inputs: &[&str],
        attributes: Vec<(&str, Attr)>,
    ) -> String {
        let attribute = attributes
            .into_iter()
            .map(|(key, value)| {
                let mut a = AttributeProto {
                    name: key.to_string(),
                    ..Default::default()
                };
                match value {
                    Attr::Int(i) => (a.i, a.r#type) = (Some(i), Some(attribute_type::INT)),
                    Attr::Ints(v) => (a.ints, a.r#type) = (v, Some(attribute_type::INTS)),
                    Attr::Float(f) => (a.f, a.r#type) = (Some(f), Some(attribute_type::FLOAT)),
                    Attr::Str(s) => {
                        (a.s, a.r#type) =
                            (Some(s.as_bytes().to_vec()), Some(attribute_type::STRING))
                    }
                }
                a
            })
            .collect();
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![name.to_string()],
            name: name.to_string(),
            op_type: op_type.to_string(),
            attribute,
        });
        name.to_string()
    }

    /// A constant f32 tensor of shape `dims`; returns its name.
    pub fn floats(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        assert_eq!(dims.iter().product::<usize>(), values.len(), "{name}");
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.constant(name, dims, data_type::FLOAT, raw)
    }

    /// A constant int64 vector; returns its name.
    pub fn ints(&mut self, name: &str, values: &[i64]) -> String {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.constant(name, &[values.len()], data_type::INT64, raw)
    }

    fn constant(
        &mut self,
        name: &str,
        dims: &[usize],
        data_type: i32,
        raw_data: Vec<u8>,
    ) -> String {
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type,
            name: name.to_string(),
            raw_data,
        });
        name.to_string()
    }
}

/// A module that can write its eval-mode forward pass as ONNX nodes.
pub trait ToOnnx {
    /// Appends the nodes that compute this module's output from the value `input`, naming
    /// them under `name` (the module's parameter path, e.g. `layer2.0`); returns the name of
    /// the output value.
    fn to_onnx(&self, graph: &mut GraphBuilder, name: &str, input: &str) -> String;
}

/// A convolution followed by a batch norm, written as one convolution with the batch norm
/// folded into its weights and bias (as catdog's own CPU kernels run it).
pub struct ConvBn<'a>(pub &'a Conv2d, pub &'a BatchNorm2d);

impl ToOnnx for ConvBn<'_> {
    fn to_onnx(&self, graph: &mut GraphBuilder, name: &str, input: &str) -> String {
        let ConvBn(conv, bn) = self;
        let dims = conv.weight.dims();
        let (weight, bias) = fold_batch_norm(conv, bn);
        let w = graph.floats(&format!("{name}.weight"), &dims, &weight);
        let b = graph.floats(&format!("{name}.bias"), &dims[..1], &bias);
        let ints = |v: [usize; 2]| Attr::Ints(v.iter().map(|&x| x as i64).collect());
        let padding = match conv.padding {
            // ONNX orders pads as burn does: begins (top, left), then ends (bottom, right).
            PaddingConfig2d::Explicit(top, left, bottom, right) => (
                "pads",
                Attr::Ints([top, left, bottom, right].map(|p| p as i64).to_vec()),
            ),
            PaddingConfig2d::Valid => ("pads", Attr::Ints(vec![0; 4])),
            // burn's `Same` is stride 1 only, with any odd pixel of padding at the end.
            PaddingConfig2d::Same => ("auto_pad", Attr::Str("SAME_UPPER")),
        };
        graph.op(
            "Conv",
            name,
            &[input, &w, &b],
            vec![
                ("kernel_shape", ints(conv.kernel_size)),
                ("strides", ints(conv.stride)),
                ("dilations", ints(conv.dilation)),
                ("group", Attr::Int(conv.groups as i64)),
                padding,
            ],
        )
    }
}

/// `max(x, 0)`, which the network applies as a function rather than a module.
pub struct Relu;

impl ToOnnx for Relu {
    fn to_onnx(&self, graph: &mut GraphBuilder, name: &str, input: &str) -> String {
        graph.op("Relu", name, &[input], vec![])
    }
}

impl ToOnnx for MaxPool {
    fn to_onnx(&self, graph: &mut GraphBuilder, name: &str, input: &str) -> String {
        let pair = |v: usize| Attr::Ints(vec![v as i64; 2]);
        graph.op(
            "MaxPool",
            name,
            &[input],
            vec![
                ("kernel_shape", pair(self.kernel)),
                ("strides", pair(self.stride)),
                ("pads", Attr::Ints(vec![self.pad as i64; 4])),
            ],
        )
    }
}

impl ToOnnx for Linear {
    fn to_onnx(&self, graph: &mut GraphBuilder, name: &str, input: &str) -> String {
        // burn stores the weight as [inputs, outputs]: Gemm's B without transposing.
        let dims = self.weight.dims();
        let w = graph.floats(&format!("{name}.weight"), &dims, &values(self.weight.val()));
        let mut inputs = vec![input.to_string(), w];
        if let Some(bias) = &self.bias {
            inputs.push(graph.floats(&format!("{name}.bias"), &dims[1..], &values(bias.val())));
        }
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        graph.op("Gemm", name, &inputs, vec![])
    }
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec()
        .expect("converted to f32")
}

impl ToOnnx for BasicBlock {
    fn to_onnx(&self, graph: &mut GraphBuilder, name: &str, input: &str) -> String {
        let identity = match &self.downsample {
            Some((conv, bn)) => {
                ConvBn(conv, bn).to_onnx(graph, &format!("{name}.downsample"), input)
            }
            None => input.to_string(),
        };
        let x = ConvBn(&self.conv1, &self.bn1).to_onnx(graph, &format!("{name}.conv1"), input);
        let x = Relu.to_onnx(graph, &format!("{name}.relu1"), &x);
        let x = ConvBn(&self.conv2, &self.bn2).to_onnx(graph, &format!("{name}.conv2"), &x);
        let x = graph.op("Add", &format!("{name}.add"), &[&x, &identity], vec![]);
        Relu.to_onnx(graph, &format!("{name}.relu2"), &x)
    }
}

impl ToOnnx for ResNet18 {
    fn to_onnx(&self, graph: &mut GraphBuilder, name: &str, input: &str) -> String {
        let path = |part: &str| {
            if name.is_empty() {
                part.to_string()
            } else {
                format!("{name}.{part}")
            }
        };
        let x = ConvBn(&self.conv1, &self.bn1).to_onnx(graph, &path("conv1"), input);
        let x = Relu.to_onnx(graph, &path("relu"), &x);
        let mut x = Self::STEM_POOL.to_onnx(graph, &path("maxpool"), &x);
        let stages = [&self.layer1, &self.layer2, &self.layer3, &self.layer4];
        for (s, stage) in stages.into_iter().enumerate() {
            for (b, block) in stage.iter().enumerate() {
                x = block.to_onnx(graph, &path(&format!("layer{}.{b}", s + 1)), &x);
            }
        }
        let x = graph.op("GlobalAveragePool", &path("avgpool"), &[&x], vec![]);
        let x = graph.op(
            "Flatten",
            &path("flatten"),
            &[&x],
            vec![("axis", Attr::Int(1))],
        );
        self.fc.to_onnx(graph, &path("fc"), &x)
    }
}
