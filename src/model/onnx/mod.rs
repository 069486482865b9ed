//! `catdog export --format onnx`: a trained model as an ONNX file, for runtimes other than
//! catdog (ONNX Runtime, OpenVINO, TensorRT, onnxruntime-web, tract).
//!
//! The graph is the eval-mode network with batch norm folded into the convolutions, built by
//! the modules themselves ([`ToOnnx`], in [`graph`]), with a dynamic batch size. Two inputs are
//! offered ([`OnnxInput`]): the normalised tensor catdog's own preprocessing makes, or a
//! decoded RGB photo of any size, with that preprocessing inside the graph. The metadata
//! carries the class names, the preprocessing, the calibration and the catdog version, and says
//! in words what the input must be.
//!
//! Opset 18: the first whose `Resize` antialiases (as PIL and torchvision do when shrinking),
//! read by ONNX Runtime and tract alike. The file is deterministic: the same model gives the
//! same bytes.

mod graph;
mod proto;

use prost::Message;

pub use graph::{Attr, ConvBn, GraphBuilder, Relu, ToOnnx};
use proto::{
    Dimension, DimensionValue, GraphProto, ModelProto, OperatorSetIdProto, StringStringEntryProto,
    TensorShapeProto, TensorTypeProto, TypeProto, ValueInfoProto, data_type,
};

use super::ResNet18;
use super::checkpoint::CheckpointMeta;
use crate::preprocess::Preprocessing;

/// The ONNX operator set the files use.
pub const OPSET: i64 = 18;
/// The IR version that goes with [`OPSET`] (ONNX's versioning table).
const IR_VERSION: i64 = 8;

/// The file formats `catdog export` writes (`--format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    Onnx,
}

crate::error::named_choice!(ExportFormat, "--format", ExportFormat::Onnx => "onnx");

/// What the exported graph takes (`--input`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnnxInput {
    /// `input`: float32 `[batch, 3, size, size]`, preprocessed as catdog does.
    #[default]
    Normalised,
    /// `image`: uint8 `[height, width, 3]`, one decoded RGB photo of any size; the graph
    /// resizes, crops and normalises it.
    Rgb8,
}

crate::error::named_choice!(OnnxInput, "--input", OnnxInput::Normalised => "normalised", OnnxInput::Rgb8 => "rgb8");

impl OnnxInput {
    /// The graph input's name.
    pub fn name(self) -> &'static str {
        match self {
            OnnxInput::Normalised => "input",
            OnnxInput::Rgb8 => "image",
        }
    }

    /// What a caller must feed, in words (the README's and the metadata's `input`).
    pub fn describe(self, p: &Preprocessing) -> String {
        let (s, r) = (p.image_size, p.resize);
        let steps = format!(
            "resize so the shorter side is {r} px (bilinear with antialias, as PIL and torchvision \
             do; the longer side truncated), centre crop {s}x{s}, scale to [0,1], subtract mean \
             {:?} and divide by std {:?} per channel (R, G, B)",
            p.mean, p.std
        );
        match self {
            OnnxInput::Normalised => format!(
                "input: float32 [batch, 3, {s}, {s}], RGB, channels first (NCHW), made from each \
                 photo by: {steps}"
            ),
            OnnxInput::Rgb8 => format!(
                "image: uint8 [height, width, 3], one decoded RGB photo of any size (channels \
                 last, as numpy.asarray(PIL.Image.open(f).convert('RGB')) gives); the graph does \
                 the rest: {steps}"
            ),
        }
    }
}

/// What the graph outputs, in words.
const OUTPUTS: &str = "logits: float32 [batch, classes], one raw score per class in the order \
     of class_names; probabilities: softmax(logits / temperature), the calibrated probabilities \
     (temperature 1 for a model never calibrated)";

/// The ONNX file for `model`, described by `meta`, taking `input`.
pub fn export(model: &ResNet18, meta: &CheckpointMeta, input: OnnxInput) -> Vec<u8> {
    let p = &meta.preprocessing;
    let size = i64::from(p.image_size);
    let mut graph = GraphBuilder::default();
    let (input_info, batch) = match input {
        OnnxInput::Normalised => (
            value_info(
                input.name(),
                data_type::FLOAT,
                vec![dim_param("batch"), dim(3), dim(size), dim(size)],
            ),
            dim_param("batch"),
        ),
        OnnxInput::Rgb8 => (
            value_info(
                input.name(),
                data_type::UINT8,
                vec![dim_param("height"), dim_param("width"), dim(3)],
            ),
            dim(1),
        ),
    };
    let x = match input {
        OnnxInput::Normalised => input.name().to_string(),
        OnnxInput::Rgb8 => preprocessing(&mut graph, p, input.name()),
    };
    let logits = model.to_onnx(&mut graph, "", &x);
    let logits = graph.op("Identity", "logits", &[&logits], vec![]);
    let temperature = meta.calibration.map_or(1.0, |c| c.temperature);
    let t = graph.floats("temperature", &[], &[temperature as f32]);
    let scaled = graph.op("Div", "logits_over_temperature", &[&logits, &t], vec![]);
    graph.op(
        "Softmax",
        "probabilities",
        &[&scaled],
        vec![("axis", Attr::Int(1))],
    );
    let classes = dim(meta.class_names.len() as i64);
    let outputs = ["logits", "probabilities"]
        .map(|name| value_info(name, data_type::FLOAT, vec![batch.clone(), classes.clone()]));

    let description = input.describe(p);
    let metadata = [
        ("catdog_version", env!("CARGO_PKG_VERSION").to_string()),
        ("trained_with_catdog_version", meta.catdog_version.clone()),
        ("architecture", meta.arch.clone()),
        (
            "class_names",
            serde_json::to_string(&meta.class_names).expect("strings serialise"),
        ),
        ("input", description.clone()),
        ("outputs", OUTPUTS.to_string()),
        (
            "preprocessing",
            serde_json::to_string(p).expect("preprocessing serialises"),
        ),
        ("temperature", temperature.to_string()),
        (
            "calibration",
            serde_json::to_string(&meta.calibration).expect("calibration serialises"),
        ),
    ];
    let model = ModelProto {
        ir_version: IR_VERSION,
        producer_name: "catdog".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!(
            "{} classifier ({}). {description}. {OUTPUTS}.",
            meta.class_names.join(" vs "),
            meta.arch
        ),
        graph: Some(GraphProto {
            node: graph.nodes,
            name: "catdog".into(),
            initializer: graph.initializers,
            doc_string: String::new(),
            input: vec![input_info],
            output: outputs.to_vec(),
        }),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        metadata_props: metadata
            .into_iter()
            .map(|(key, value)| StringStringEntryProto {
                key: key.into(),
                value,
            })
            .collect(),
    };
    model.encode_to_vec()
}

/// catdog's eval preprocessing ([`Preprocessing::eval`]) as nodes, from the uint8
/// `[height, width, 3]` photo `image` to the normalised `[1, 3, size, size]` tensor.
fn preprocessing(graph: &mut GraphBuilder, p: &Preprocessing, image: &str) -> String {
    let g = graph;
    let x = g.op(
        "Cast",
        "pre.float",
        &[image],
        vec![("to", Attr::Int(data_type::FLOAT.into()))],
    );
    let x = g.op(
        "Transpose",
        "pre.chw",
        &[&x],
        vec![("perm", Attr::Ints(vec![2, 0, 1]))],
    );
    let zero = g.ints("pre.axis0", &[0]);
    let x = g.op("Unsqueeze", "pre.nchw", &[&x, &zero], vec![]);

    // The resized size: shorter side `resize`, the longer scaled and truncated, in integers
    // as catdog (and torchvision) compute it.
    let shape = g.op("Shape", "pre.shape", &[image], vec![]);
    let two = g.ints("pre.two", &[2]);
    let hw = g.op("Slice", "pre.hw", &[&shape, &zero, &two], vec![]);
    let shorter = g.op(
        "ReduceMin",
        "pre.shorter",
        &[&hw],
        vec![("keepdims", Attr::Int(1))],
    );
    let target = g.ints("pre.resize", &[i64::from(p.resize)]);
    let scaled = g.op("Mul", "pre.hw_times_resize", &[&hw, &target], vec![]);
    let resized_hw = g.op("Div", "pre.resized_hw", &[&scaled, &shorter], vec![]);
    let batch_channels = g.ints("pre.batch_channels", &[1, 3]);
    let sizes = g.op(
        "Concat",
        "pre.sizes",
        &[&batch_channels, &resized_hw],
        vec![("axis", Attr::Int(0))],
    );
    let x = g.op(
        "Resize",
        "pre.resize_bilinear",
        &[&x, "", "", &sizes],
        vec![
            ("mode", Attr::Str("linear")),
            ("antialias", Attr::Int(1)),
            ("coordinate_transformation_mode", Attr::Str("half_pixel")),
        ],
    );
    // catdog resizes 8-bit pixels: round and clamp to their range.
    let x = g.op("Round", "pre.round", &[&x], vec![]);
    let lo = g.floats("pre.min", &[], &[0.0]);
    let hi = g.floats("pre.max", &[], &[255.0]);
    let x = g.op("Clip", "pre.clip", &[&x, &lo, &hi], vec![]);

    // Centre crop: the offset rounds half to even, as Round does and torchvision's does.
    let crop = g.ints("pre.crop", &[i64::from(p.image_size); 2]);
    let excess = g.op("Sub", "pre.excess", &[&resized_hw, &crop], vec![]);
    let excess = g.op(
        "Cast",
        "pre.excess_float",
        &[&excess],
        vec![("to", Attr::Int(data_type::FLOAT.into()))],
    );
    let half = g.floats("pre.half", &[], &[0.5]);
    let offset = g.op("Mul", "pre.half_excess", &[&excess, &half], vec![]);
    let offset = g.op("Round", "pre.offset_float", &[&offset], vec![]);
    let starts = g.op(
        "Cast",
        "pre.offset",
        &[&offset],
        vec![("to", Attr::Int(data_type::INT64.into()))],
    );
    let ends = g.op("Add", "pre.end", &[&starts, &crop], vec![]);
    let axes = g.ints("pre.axes_hw", &[2, 3]);
    let x = g.op(
        "Slice",
        "pre.centre_crop",
        &[&x, &starts, &ends, &axes],
        vec![],
    );

    // In the order and precision of catdog's lookup table: v / 255, minus mean, over std.
    let full = g.floats("pre.255", &[], &[255.0]);
    let x = g.op("Div", "pre.unit", &[&x, &full], vec![]);
    let mean = g.floats("pre.mean", &[1, 3, 1, 1], &p.mean);
    let std = g.floats("pre.std", &[1, 3, 1, 1], &p.std);
    let x = g.op("Sub", "pre.centred", &[&x, &mean], vec![]);
    g.op("Div", "pre.normalised", &[&x, &std], vec![])
}

fn dim(value: i64) -> Dimension {
    Dimension {
        value: Some(DimensionValue::DimValue(value)),
    }
}

fn dim_param(name: &str) -> Dimension {
    Dimension {
        value: Some(DimensionValue::DimParam(name.into())),
    }
}

fn value_info(name: &str, elem_type: i32, dims: Vec<Dimension>) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type,
                shape: Some(TensorShapeProto { dim: dims }),
            }),
        }),
        doc_string: String::new(),
    }
}
