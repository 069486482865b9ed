//! Weight files: where the ImageNet weights live, and loading a torchvision state dict
//! (`.pth`) or a safetensors file with the same tensor names into a [`ResNet18`].
//!
//! Loading checks the whole file against the model before touching it (names, shapes, element
//! kind), so a wrong file fails with its path and the first offending tensor rather than with a
//! half-loaded model or a panic.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use burn::store::burn_pack::Tensor as PackTensor;
use burn::store::{
    BurnToPyTorchAdapter, FloatCastAdapter, ModuleAdapter, ModuleSnapshot, ModuleStore,
    PyTorchToBurnAdapter, PytorchStore, SafetensorsStore,
};
use burn::tensor::DType;

use super::ResNet18;
use crate::error::{Error, Result};

/// torchvision's ImageNet weights for ResNet-18 (`ResNet18_Weights.IMAGENET1K_V1`).
pub const RESNET18_URL: &str = "https://download.pytorch.org/models/resnet18-f37072fd.pth";
/// File name of those weights, in our cache and in PyTorch's.
pub const RESNET18_FILE: &str = "resnet18-f37072fd.pth";
/// SHA-256 of that file.
pub const RESNET18_SHA256: &str =
    "f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec";
/// Size of that file in bytes.
pub const RESNET18_SIZE: u64 = 46_830_571;
/// Classes of the ImageNet head.
pub const IMAGENET_NUM_CLASSES: usize = 1000;

/// What `--weights` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(from = "String", into = "String")]
pub enum WeightsChoice {
    /// The ImageNet weights from our cache, else from PyTorch's.
    #[default]
    Auto,
    /// This file (`.pth` or `.safetensors`).
    File(PathBuf),
    /// No weights: random initialisation.
    None,
}

/// As `--weights` takes it, and as `config.json` records it.
impl std::fmt::Display for WeightsChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WeightsChoice::Auto => f.write_str("auto"),
            WeightsChoice::None => f.write_str("none"),
            WeightsChoice::File(path) => write!(f, "{}", path.display()),
        }
    }
}

impl From<String> for WeightsChoice {
    fn from(s: String) -> Self {
        s.parse().unwrap_or_else(|never| match never {})
    }
}

impl From<WeightsChoice> for String {
    fn from(choice: WeightsChoice) -> Self {
        choice.to_string()
    }
}

impl FromStr for WeightsChoice {
    type Err = std::convert::Infallible;

    /// `auto`, `none`, or a path (write `./auto` for a file named `auto`).
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(match s {
            "auto" => WeightsChoice::Auto,
            "none" => WeightsChoice::None,
            path => WeightsChoice::File(PathBuf::from(path)),
        })
    }
}

/// The folders searched for the ImageNet weights, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightLocations {
    /// catdog's cache: `$CATDOG_CACHE`, else `$XDG_CACHE_HOME/catdog`, else `~/.cache/catdog`.
    pub cache: PathBuf,
    /// PyTorch's download folder, `$TORCH_HOME/hub/checkpoints` (default
    /// `~/.cache/torch/hub/checkpoints`), so weights torchvision already fetched are reused.
    pub torch: Option<PathBuf>,
}

impl WeightLocations {
    /// The locations from this process's environment.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var_os(name))
    }

    /// The locations given an environment lookup (testable without touching the real one).
    pub fn from_lookup(env: impl Fn(&str) -> Option<OsString>) -> Result<Self> {
        let var = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let home_cache = var("HOME").map(|home| home.join(".cache"));
        // XDG says relative values are invalid and must be ignored.
        let xdg_cache = var("XDG_CACHE_HOME")
            .filter(|p| p.is_absolute())
            .or(home_cache);
        let cache = match var("CATDOG_CACHE") {
            Some(dir) => dir,
            None => xdg_cache
                .as_ref()
                .map(|dir| dir.join("catdog"))
                .ok_or_else(|| {
                    Error::setting(
                        "cache folder",
                        "none of CATDOG_CACHE, XDG_CACHE_HOME or HOME is set; set CATDOG_CACHE",
                    )
                })?,
        };
        // PyTorch's own rule: $TORCH_HOME, else $XDG_CACHE_HOME/torch, else ~/.cache/torch.
        let torch = var("TORCH_HOME")
            .or_else(|| xdg_cache.map(|dir| dir.join("torch")))
            .map(|home| home.join("hub").join("checkpoints"));
        Ok(Self { cache, torch })
    }

    /// Where `catdog weights download` puts the ImageNet weights.
    pub fn cached_file(&self) -> PathBuf {
        self.cache.join(RESNET18_FILE)
    }

    fn candidates(&self) -> Vec<PathBuf> {
        let mut files = vec![self.cached_file()];
        files.extend(self.torch.as_ref().map(|dir| dir.join(RESNET18_FILE)));
        files
    }
}

impl WeightsChoice {
    /// The weight file this choice means, or `None` for random initialisation (the caller says
    /// so to the user). `Auto` searches [`WeightLocations::from_env`].
    pub fn resolve(&self) -> Result<Option<PathBuf>> {
        match self {
            WeightsChoice::None => Ok(None),
            WeightsChoice::File(path) if path.is_file() => Ok(Some(path.clone())),
            WeightsChoice::File(path) => Err(Error::weights(
                path,
                "no such weight file",
                "pass a torchvision ResNet-18 .pth or .safetensors file, `--weights auto` or `--weights none`",
            )),
            WeightsChoice::Auto => find_imagenet_weights(&WeightLocations::from_env()?).map(Some),
        }
    }
}

/// The ImageNet weights: in our cache, else in PyTorch's; if neither has them, an error
/// saying how to get them and exactly where to put a copy made by hand.
pub fn find_imagenet_weights(locations: &WeightLocations) -> Result<PathBuf> {
    let candidates = locations.candidates();
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    Err(Error::weights(
        locations.cached_file(),
        format!(
            "the ImageNet weights are not there (looked in: {})",
            looked.join(", ")
        ),
        missing_weights_hint(&locations.cached_file()),
    ))
}

/// How to get the ImageNet weights, and exactly where to put a copy made by hand.
fn missing_weights_hint(destination: &Path) -> String {
    format!(
        "run `catdog weights download`; without internet access, download {RESNET18_URL} on another machine \
         and copy it to {} (sha256 {RESNET18_SHA256}); or pass `--weights PATH`, or `--weights none` for \
         random initialisation",
        destination.display()
    )
}

/// What happened to the model's head during a load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadWeights {
    /// The file's `fc` was loaded.
    Loaded,
    /// The file's `fc` has `file_classes` outputs (ImageNet's 1000) and the model's head another
    /// number: it was skipped and the model's own head kept.
    Kept { file_classes: usize },
}

/// A successful load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Tensors copied into the model.
    pub tensors: usize,
    pub head: HeadWeights,
}

/// Where a new model's weights came from, as a person reads it (after "weights: ").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Random,
    File { path: PathBuf, report: LoadReport },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Random => write!(f, "none, random initialisation"),
            Origin::File { path, report } => {
                write!(f, "{} ({} tensors", path.display(), report.tensors)?;
                if let HeadWeights::Kept { file_classes } = report.head {
                    write!(f, "; its {file_classes}-class head is not used")?;
                }
                write!(f, ")")
            }
        }
    }
}

/// The one way a new model gets its starting weights: a ResNet-18 with a `num_classes` head,
/// loaded from `file` by [`load_into`], or randomly initialised from `seed` when `None`.
pub fn load_model(
    file: Option<&Path>,
    num_classes: usize,
    seed: u64,
    device: &burn::prelude::Device,
) -> Result<(ResNet18, Origin)> {
    let Some(path) = file else {
        return Ok((ResNet18::seeded(num_classes, seed, device), Origin::Random));
    };
    let mut model = ResNet18::zeroed(num_classes, device);
    let report = load_into(&mut model, path)?;
    let origin = Origin::File {
        report,
        path: path.to_owned(),
    };
    Ok((model, origin))
}

/// Loads a torchvision ResNet-18 state dict (`.pth`, PyTorch's zip or legacy format) or a
/// safetensors file with the same names into `model`. `num_batches_tracked` entries are
/// ignored; a 1000-class `fc` is skipped when the model's head has another size. Any other
/// difference (missing, extra or misshapen tensor; not a weight file) is an error naming the
/// file and the first offending tensor, and leaves `model` untouched. (Only a file whose index
/// checks out but whose data then cannot be read may leave it partly loaded.)
pub fn load_into(model: &mut ResNet18, path: &Path) -> Result<LoadReport> {
    load_checked(model, path, true)
}

/// [`load_into`], optionally refusing to skip the head (for our own checkpoints, whose head
/// must always fit).
pub(crate) fn load_checked(
    model: &mut ResNet18,
    path: &Path,
    may_skip_head: bool,
) -> Result<LoadReport> {
    let file = read_tensors(path)?;
    let plan = check(model, &file, may_skip_head).map_err(|problem| {
        Error::weights(
            path,
            problem,
            "expected torchvision's ResNet-18 weights (like resnet18-f37072fd.pth) or a safetensors file \
             with the same tensor names and shapes, such as a catdog model.safetensors",
        )
    })?;
    let wanted: Vec<PackTensor> = file
        .into_values()
        .filter(|t| plan.load.contains(&t.name))
        .collect();
    // PyTorch keeps Linear weights as [out, in], burn as [in, out]; half-precision files are
    // widened, since the model computes in f32.
    let adapter = PyTorchToBurnAdapter.chain(FloatCastAdapter::to(DType::F32));
    let result = model.apply(wanted, None, Some(Box::new(adapter)), true);
    if let Some(error) = result.errors.first() {
        return Err(Error::weights(
            path,
            format!("cannot read tensor data: {error}"),
            "the file is damaged; get it again",
        ));
    }
    if let Some((name, _)) = result
        .missing
        .iter()
        .find(|(name, _)| plan.load.contains(name))
    {
        return Err(Error::weights(
            path,
            format!("tensor `{name}` was not loaded"),
            "the file is damaged; get it again",
        ));
    }
    Ok(LoadReport {
        tensors: result.applied.len(),
        head: plan.head,
    })
}

/// Which tensors of a checked file to load.
struct LoadPlan {
    load: HashSet<String>,
    head: HeadWeights,
}

/// Compares the file's tensors with the model's (names and PyTorch-layout shapes, in the
/// model's order, then anything left over) and says the first difference.
fn check(
    model: &ResNet18,
    file: &BTreeMap<String, PackTensor>,
    may_skip_head: bool,
) -> Result<LoadPlan, String> {
    let expected = model.collect(None, Some(Box::new(BurnToPyTorchAdapter)), true);
    let head_classes = model.num_classes();
    let file_head = file.get("fc.weight").and_then(|t| t.shape.first().copied());
    let skip_head = may_skip_head
        && head_classes != IMAGENET_NUM_CLASSES
        && file
            .get("fc.weight")
            .is_some_and(|t| *t.shape == [IMAGENET_NUM_CLASSES, super::FEATURES])
        && file
            .get("fc.bias")
            .is_some_and(|t| *t.shape == [IMAGENET_NUM_CLASSES]);

    let mut load = HashSet::new();
    for want in &expected {
        if skip_head && want.name.starts_with("fc.") {
            continue;
        }
        let Some(have) = file.get(&want.name) else {
            return Err(format!(
                "tensor `{}` (shape {}) is missing",
                want.name, want.shape
            ));
        };
        if have.shape != want.shape {
            let mut problem = format!(
                "tensor `{}` has shape {}, ResNet-18 needs {}",
                want.name, have.shape, want.shape
            );
            if let (true, Some(classes)) = (want.name.starts_with("fc."), file_head) {
                problem += &format!(
                    " (the file's head has {classes} classes, the model's {head_classes})"
                );
            }
            return Err(problem);
        }
        if !have.dtype.is_float() {
            return Err(format!(
                "tensor `{}` holds {:?} values, not floating point",
                want.name, have.dtype
            ));
        }
        load.insert(want.name.clone());
    }
    let known: HashSet<&str> = expected.iter().map(|t| t.name.as_str()).collect();
    // PyTorch's batch-norm step counter has no use here.
    if let Some(extra) = file
        .keys()
        .find(|name| !known.contains(name.as_str()) && !name.ends_with(".num_batches_tracked"))
    {
        return Err(format!(
            "unexpected tensor `{extra}`: torchvision's ResNet-18 has no such parameter"
        ));
    }
    let head = match (skip_head, file_head) {
        (true, Some(file_classes)) => HeadWeights::Kept { file_classes },
        _ => HeadWeights::Loaded,
    };
    Ok(LoadPlan { load, head })
}

/// All tensors of a weight file by name (data is read later, on load). The format is taken
/// from the content, not the extension.
fn read_tensors(path: &Path) -> Result<BTreeMap<String, PackTensor>> {
    let mut head = [0u8; 9];
    let mut file = File::open(path).map_err(|e| Error::io("cannot open weight file", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| Error::io("cannot read", path, e))?
        .len();
    let not_weights = |problem: String| {
        Error::weights(
            path,
            problem,
            "pass a torchvision ResNet-18 .pth file or a .safetensors file; if it was downloaded, download it again",
        )
    };
    if file.read_exact(&mut head).is_err() {
        return Err(not_weights(format!("not a weight file (only {len} bytes)")));
    }
    drop(file);
    // safetensors: an 8-byte little-endian header length, then the JSON header.
    let header_len = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
    let result = if head[8] == b'{' && header_len < len {
        SafetensorsStore::from_file(path)
            .get_all_tensors()
            .cloned()
            .map_err(|e| ("safetensors", e.to_string()))
    } else if head.starts_with(b"PK\x03\x04") || head[0] == 0x80 {
        // A zip archive (PyTorch >= 1.6) or a bare pickle (older torch.save). The key mapping
        // that renumbers nn.Sequential gaps is off: torchvision's names are already ours.
        PytorchStore::from_file(path)
            .map_indices_contiguous(false)
            .get_all_tensors()
            .cloned()
            .map_err(|e| ("PyTorch", e.to_string()))
    } else {
        return Err(not_weights(
            "not a PyTorch (.pth) or safetensors file".into(),
        ));
    };
    result.map_err(|(format, e)| {
        not_weights(format!(
            "unreadable {format} file (truncated or damaged?): {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::prelude::Device;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn locations_follow_the_environment_in_order() {
        let l = WeightLocations::from_lookup(env(&[("HOME", "/home/u")])).unwrap();
        assert_eq!(l.cache, PathBuf::from("/home/u/.cache/catdog"));
        assert_eq!(
            l.torch,
            Some(PathBuf::from("/home/u/.cache/torch/hub/checkpoints"))
        );

        let l = WeightLocations::from_lookup(env(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/x")]))
            .unwrap();
        assert_eq!(l.cache, PathBuf::from("/x/catdog"));
        assert_eq!(l.torch, Some(PathBuf::from("/x/torch/hub/checkpoints")));

        let l = WeightLocations::from_lookup(env(&[
            ("HOME", "/home/u"),
            ("XDG_CACHE_HOME", "relative"),
            ("CATDOG_CACHE", "/c"),
            ("TORCH_HOME", "/t"),
        ]))
        .unwrap();
        assert_eq!(l.cache, PathBuf::from("/c"));
        assert_eq!(l.torch, Some(PathBuf::from("/t/hub/checkpoints")));

        assert!(WeightLocations::from_lookup(env(&[])).is_err());
        let l = WeightLocations::from_lookup(env(&[("CATDOG_CACHE", "/c")])).unwrap();
        assert_eq!(l.torch, None);
    }

    #[test]
    fn auto_prefers_our_cache_then_pytorchs_and_explains_where_to_put_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let l = WeightLocations {
            cache: dir.path().join("ours"),
            torch: Some(dir.path().join("torch")),
        };
        let err = find_imagenet_weights(&l).unwrap_err().to_string();
        let expected_place = dir.path().join("ours").join(RESNET18_FILE);
        assert!(
            err.contains(&format!("copy it to {}", expected_place.display())),
            "{err}"
        );
        assert!(err.contains(RESNET18_URL), "{err}");

        std::fs::create_dir_all(dir.path().join("torch")).unwrap();
        std::fs::write(dir.path().join("torch").join(RESNET18_FILE), b"x").unwrap();
        assert_eq!(
            find_imagenet_weights(&l).unwrap(),
            dir.path().join("torch").join(RESNET18_FILE)
        );
        std::fs::create_dir_all(dir.path().join("ours")).unwrap();
        std::fs::write(&expected_place, b"x").unwrap();
        assert_eq!(find_imagenet_weights(&l).unwrap(), expected_place);
    }

    #[test]
    fn explicit_choices() {
        let none: WeightsChoice = "none".parse().unwrap();
        assert_eq!(none.resolve().unwrap(), None);
        let missing: WeightsChoice = "/no/such.pth".parse().unwrap();
        let err = missing.resolve().unwrap_err().to_string();
        assert!(
            err.starts_with("/no/such.pth: no such weight file"),
            "{err}"
        );
        let file = tempfile::NamedTempFile::new().unwrap();
        let choice: WeightsChoice = file.path().to_str().unwrap().parse().unwrap();
        assert_eq!(choice.resolve().unwrap(), Some(file.path().to_path_buf()));
        assert_eq!(
            "auto".parse::<WeightsChoice>().unwrap(),
            WeightsChoice::Auto
        );
    }

    #[test]
    fn non_weight_files_are_refused_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let device = Device::flex();
        let mut model = ResNet18::new(2, &device);
        for (name, bytes) in [
            ("empty.pth", &b""[..]),
            ("text.pth", &b"this is not a checkpoint at all"[..]),
            ("cut.pth", &b"PK\x03\x04\x14\x00\x00\x00\x08\x00"[..]),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let err = load_into(&mut model, &path).unwrap_err().to_string();
            assert!(err.starts_with(&path.display().to_string()), "{err}");
            assert!(err.contains("hint:"), "{err}");
        }
    }

    /// One tensor of a hand-made safetensors file: name, dtype, shape, little-endian bytes.
    type Entry = (String, &'static str, Vec<usize>, Vec<u8>);

    /// The model's tensors as torchvision names and lays them out, plus the batch-norm step
    /// counters a real state dict has.
    fn entries_of(model: &ResNet18) -> Vec<Entry> {
        let mut entries: Vec<Entry> = model
            .collect(None, Some(Box::new(BurnToPyTorchAdapter)), true)
            .into_iter()
            .map(|t| {
                (
                    t.name.clone(),
                    "F32",
                    t.shape.to_vec(),
                    t.to_bytes().unwrap().to_vec(),
                )
            })
            .collect();
        let counters: Vec<Entry> = entries
            .iter()
            .filter_map(|(name, ..)| name.strip_suffix(".running_mean"))
            .map(|bn| {
                (
                    format!("{bn}.num_batches_tracked"),
                    "I64",
                    vec![],
                    7i64.to_le_bytes().to_vec(),
                )
            })
            .collect();
        entries.extend(counters);
        entries
    }

    fn safetensors(entries: &[Entry]) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for (name, dtype, shape, bytes) in entries {
            let start = data.len();
            data.extend_from_slice(bytes);
            header.insert(
                name.clone(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
            );
        }
        let mut header = serde_json::to_vec(&header).unwrap();
        header.resize(header.len().div_ceil(8) * 8, b' ');
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend(header);
        file.extend(data);
        file
    }

    fn features(model: &ResNet18) -> Vec<f32> {
        let x = burn::tensor::Tensor::<4>::ones([1, 3, 32, 32], &Device::flex());
        model.features(x).into_data().try_into_vec().unwrap()
    }

    fn write(dir: &Path, name: &str, entries: &[Entry]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, safetensors(entries)).unwrap();
        path
    }

    #[test]
    fn safetensors_with_torchvision_names_load_and_imagenet_head_is_skipped_for_other_sizes() {
        let device = Device::flex();
        let dir = tempfile::tempdir().unwrap();
        let source = ResNet18::new(1000, &device);
        let path = write(dir.path(), "w.safetensors", &entries_of(&source));

        let mut same = ResNet18::new(1000, &device);
        let report = load_into(&mut same, &path).unwrap();
        assert_eq!(
            report,
            LoadReport {
                tensors: 102,
                head: HeadWeights::Loaded
            }
        );
        let x = burn::tensor::Tensor::<4>::ones([1, 3, 32, 32], &device);
        let a: Vec<f32> = source
            .forward(x.clone())
            .into_data()
            .try_into_vec()
            .unwrap();
        let b: Vec<f32> = same.forward(x).into_data().try_into_vec().unwrap();
        assert_eq!(a, b);

        let mut two = ResNet18::new(2, &device).with_head(2, 1, &device);
        let head_before = two.fc.weight.val().into_data();
        let report = load_into(&mut two, &path).unwrap();
        assert_eq!(
            report,
            LoadReport {
                tensors: 100,
                head: HeadWeights::Kept { file_classes: 1000 }
            }
        );
        assert_eq!(features(&two), features(&source));
        assert_eq!(two.fc.weight.val().into_data(), head_before);
    }

    #[test]
    fn wrong_files_name_the_file_and_the_first_offending_tensor() {
        let device = Device::flex();
        let dir = tempfile::tempdir().unwrap();
        let good = entries_of(&ResNet18::new(1000, &device));
        let mut model = ResNet18::new(2, &device);
        let before = features(&model);
        let check = |name: &str, entries: Vec<Entry>, expected: &str| {
            let path = write(dir.path(), name, &entries);
            let mut model = model.clone();
            let err = load_into(&mut model, &path).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{}: ", path.display())), "{err}");
            assert!(err.contains(expected), "{err}");
        };

        let missing = good
            .iter()
            .filter(|e| e.0 != "layer3.1.bn2.running_var")
            .cloned()
            .collect();
        check(
            "missing.safetensors",
            missing,
            "tensor `layer3.1.bn2.running_var` (shape [256]) is missing",
        );

        let mut resnet34_like = good.clone();
        resnet34_like.push((
            "layer1.2.conv1.weight".into(),
            "F32",
            vec![64, 64, 3, 3],
            vec![0; 64 * 64 * 9 * 4],
        ));
        check(
            "extra.safetensors",
            resnet34_like,
            "unexpected tensor `layer1.2.conv1.weight`",
        );

        let mut bottleneck_like = good.clone();
        bottleneck_like[3] = (
            bottleneck_like[3].0.clone(),
            "F32",
            vec![64, 64, 1, 1],
            vec![0; 64 * 64 * 4],
        );
        let name = bottleneck_like[3].0.clone();
        check(
            "shape.safetensors",
            bottleneck_like,
            &format!("`{name}` has shape [64, 64, 1, 1], ResNet-18 needs"),
        );

        let ten_classes = entries_of(&ResNet18::new(10, &device));
        check(
            "head.safetensors",
            ten_classes,
            "the file's head has 10 classes, the model's 2",
        );

        let mut ints = good.clone();
        ints[0].1 = "I32";
        check("ints.safetensors", ints, "not floating point");

        let bytes = safetensors(&good);
        let path = dir.path().join("truncated.safetensors");
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = load_into(&mut model, &path).unwrap_err().to_string();
        assert!(err.contains("unreadable safetensors file"), "{err}");

        assert_eq!(
            features(&model),
            before,
            "a failed load leaves the model as it was"
        );
    }
}
