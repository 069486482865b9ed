//! catdog's preprocessing against torchvision's, on the real photos.

use crate::common;

use catdog::preprocess::{IMAGENET_STD, eval_tensor_from_path};

#[test]
#[ignore = "needs ../shared"]
fn eval_transform_reproduces_torchvision_input_npy() {
    let shared = common::shared();
    let golden = shared.join("golden/resnet18");
    let (shape, expected) = common::read_npy_f32(&golden.join("input.npy"));
    assert_eq!(shape, [8, 3, 224, 224]);
    let names = std::fs::read_to_string(golden.join("images.txt")).unwrap();
    let names: Vec<&str> = names.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(names.len(), 8);
    let plane = 224 * 224;
    let (mut within, mut total, mut max_steps) = (0usize, 0usize, 0f32);
    for (i, name) in names.iter().enumerate() {
        let ours =
            eval_tensor_from_path(&shared.join("data/kaggle-sample").join(name), 224).unwrap();
        let theirs = &expected[i * 3 * plane..(i + 1) * 3 * plane];
        for (j, (a, b)) in ours.iter().zip(theirs).enumerate() {
            // One 8-bit step, in normalised units, is 1/255/std of the channel.
            let steps = (a - b).abs() * 255.0 * IMAGENET_STD[j / plane];
            max_steps = max_steps.max(steps);
            within += usize::from(steps <= 2.0 + 1e-3);
            total += 1;
        }
    }
    let share = within as f64 / total as f64;
    eprintln!(
        "within two 8-bit steps: {:.4}% of {total} values; largest difference {max_steps:.2} steps",
        share * 100.0
    );
    assert!(
        share >= 0.999,
        "only {:.4}% of values within two 8-bit steps",
        share * 100.0
    );
}
