//! Grad-CAM (Selvaraju et al., 2017): which parts of a photo pushed the model
//! towards a class. [`gradcam_maps`] runs the model for the activations of the
//! last convolutional stage (`layer4`) and the gradients of the class score
//! with respect to them, and [`gradcam_map`] turns those into a heat map.
//! Drawing it over the photo is the report's (`report::overlay`).

use burn::module::Module;
use burn::prelude::*;

use super::ResNet18;

/// The Grad-CAM map (`h` x `w`, row-major) from `activations` and `gradients`,
/// both `c` x `h` x `w`. Each channel is weighted by the spatial mean of its
/// gradient (how much the class score rises with it), the weighted channels
/// are summed, negative values are cut (only evidence *for* the class is
/// shown), and the result is stretched to [0, 1] so that every map uses the
/// whole colour scale. A map without contrast comes back all 0.
///
/// # Panics
/// If a slice's length is not `c * h * w`, or the map is empty.
pub fn gradcam_map(
    activations: &[f32],
    gradients: &[f32],
    c: usize,
    h: usize,
    w: usize,
) -> Vec<f32> {
    let plane = h * w;
    assert!(plane > 0, "a Grad-CAM map needs at least one pixel");
    assert_eq!(
        activations.len(),
        c * plane,
        "activations must be c x h x w"
    );
    assert_eq!(gradients.len(), c * plane, "gradients must be c x h x w");
    let mut map = vec![0.0f32; plane];
    for (acts, grads) in activations
        .chunks_exact(plane)
        .zip(gradients.chunks_exact(plane))
    {
        let weight = grads.iter().sum::<f32>() / plane as f32;
        for (m, a) in map.iter_mut().zip(acts) {
            *m += weight * a;
        }
    }
    map.iter_mut().for_each(|m| *m = m.max(0.0));
    let lo = map.iter().copied().fold(f32::INFINITY, f32::min);
    let range = map.iter().copied().fold(f32::NEG_INFINITY, f32::max) - lo;
    map.iter_mut()
        .for_each(|m| *m = if range > 0.0 { (*m - lo) / range } else { 0.0 });
    map
}

/// A Grad-CAM heat map: `height` x `width` values in [0, 1], row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct HeatMap {
    pub values: Vec<f32>,
    pub height: usize,
    pub width: usize,
}

/// The Grad-CAM map of `layer4` for class `classes[i]` of image `i`. `batch`
/// holds the images' CHW tensors back to back (as for
/// [`crate::model::predict::probabilities`]); they go through the network in
/// one pass. The maps are `image_size / 32` pixels a side, aligned with the
/// model's input (see [`crate::preprocess::Preprocessing::eval_crop`]).
///
/// The gradients come from burn's autodiff, on `device` with autodiff added,
/// with the whole model frozen: batch norm uses its running statistics, so
/// the maps are those of the model as it predicts.
pub fn gradcam_maps(
    model: &ResNet18,
    batch: Vec<f32>,
    image_size: usize,
    classes: &[usize],
    device: &Device,
) -> Vec<HeatMap> {
    let n = classes.len();
    if n == 0 {
        return Vec::new();
    }
    let autodiff = device.clone().autodiff();
    let model = model.clone().fork(&autodiff).freeze();
    let images = Tensor::<4>::from_data(
        TensorData::new(batch, [n, 3, image_size, image_size]),
        &autodiff,
    );
    let (activations, logits) = model.forward_with_activations(images);
    // Images do not interact (batch norm is frozen), so the gradient of the sum
    // of each image's class score is, for each image, that of its own score.
    let [_, num_classes] = logits.dims();
    let mut one_hot = vec![0.0f32; n * num_classes];
    for (i, &class) in classes.iter().enumerate() {
        one_hot[i * num_classes + class] = 1.0;
    }
    let one_hot = Tensor::<2>::from_data(TensorData::new(one_hot, [n, num_classes]), &autodiff);
    let gradients = (logits * one_hot).sum().backward();
    let [_, c, h, w] = activations.dims();
    let values = |t: Tensor<4>| -> Vec<f32> {
        t.into_data()
            .try_into_vec()
            .expect("the model computes in f32")
    };
    let grads = values(
        activations
            .grad(&gradients)
            .expect("forward_with_activations makes the activations require gradients"),
    );
    let acts = values(activations);
    acts.chunks_exact(c * h * w)
        .zip(grads.chunks_exact(c * h * w))
        .map(|(a, g)| HeatMap {
            values: gradcam_map(a, g, c, h, w),
            height: h,
            width: w,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_weights_channels_by_mean_gradient_and_cuts_negatives() {
        // 2 channels of 1 x 3. Mean gradients: 1 and -0.5.
        let activations = [1.0, 2.0, 3.0, 4.0, 0.0, 2.0];
        let gradients = [1.0, 1.0, 1.0, -0.5, -0.5, -0.5];
        // 1*[1 2 3] - 0.5*[4 0 2] = [-1 2 2] → ReLU [0 2 2] → [0 1 1].
        assert_eq!(
            gradcam_map(&activations, &gradients, 2, 1, 3),
            vec![0.0, 1.0, 1.0]
        );
    }

    #[test]
    fn map_has_the_right_shape_and_range_and_is_not_flat() {
        // Three channels, each a bump at its own place; the class score rises
        // with the first two and falls with the third.
        let (c, h, w) = (3, 7, 5);
        let centres = [(1.0, 1.0), (5.0, 3.0), (3.0, 2.0)];
        let mut activations = Vec::new();
        for (cy, cx) in centres {
            for y in 0..h {
                for x in 0..w {
                    let d2: f32 = (y as f32 - cy).powi(2) + (x as f32 - cx).powi(2);
                    activations.push((-d2 / 2.0).exp());
                }
            }
        }
        let gradients: Vec<f32> = [1.0, 0.5, -1.0]
            .iter()
            .flat_map(|&g| vec![g; h * w])
            .collect();
        let map = gradcam_map(&activations, &gradients, c, h, w);
        assert_eq!(map.len(), h * w);
        assert!(map.iter().all(|v| (0.0..=1.0).contains(v)), "{map:?}");
        assert_eq!(map.iter().copied().fold(0.0, f32::max), 1.0);
        assert_eq!(map[w + 1], 1.0, "the strongest bump is the hottest pixel");
        assert_eq!(
            map[2 * w + 3],
            0.0,
            "the negative channel's bump is cut: {map:?}"
        );
    }

    #[test]
    fn map_without_contrast_is_zero() {
        assert_eq!(gradcam_map(&[1.0; 4], &[-1.0; 4], 1, 2, 2), vec![0.0; 4]);
        assert_eq!(gradcam_map(&[1.0; 4], &[1.0; 4], 1, 2, 2), vec![0.0; 4]);
    }

    #[test]
    fn maps_from_the_model_are_grad_cam_of_its_linear_head() {
        // Behind global average pooling and a linear head, d(score of k)/d(activation)
        // is fc's column k over h*w in every cell: the maps must equal those
        // computed from that, with the activations of the model in inference mode
        // (the model is given in training mode, as a training loop holds it).
        let device = Device::flex();
        let mut model = ResNet18::new(2, &device).with_head(2, 5, &device);
        // Opposite columns, as a two-class head amounts to: the class-1 map is cut
        // where the class-0 map is kept, so of the two maps of an image at least
        // one has contrast, whatever the random backbone.
        let column: Vec<f32> = model
            .fc
            .weight
            .val()
            .slice([0..512, 0..1])
            .into_data()
            .try_into_vec()
            .unwrap();
        let opposite: Vec<f32> = column.iter().flat_map(|&v| [v, -v]).collect();
        model.fc.weight = burn::module::Param::from_tensor(Tensor::from_data(
            TensorData::new(opposite, [512, 2]),
            &device,
        ));
        let size = 96;
        let plane = size * size;
        // A bright square in a different corner of each image, on a darker ground;
        // each image twice, for class 0 and class 1.
        let image = |corner: bool| -> Vec<f32> {
            (0..3 * plane)
                .map(|j| {
                    let (y, x) = (j % plane / size, j % size);
                    let bright = if corner {
                        y < 40 && x < 40
                    } else {
                        y > 50 && x > 50
                    };
                    if bright { 2.0 } else { -1.0 }
                })
                .collect()
        };
        let batch: Vec<f32> = [image(true), image(true), image(false), image(false)].concat();
        let classes = [0, 1, 0, 1];
        let maps = gradcam_maps(&model, batch.clone(), size, &classes, &device);

        let x = Tensor::<4>::from_data(TensorData::new(batch, [4, 3, size, size]), &device);
        let (activations, _) = model.valid().forward_with_activations(x);
        let [_, c, h, w] = activations.dims();
        assert_eq!((h, w), (3, 3));
        let acts: Vec<f32> = activations.into_data().try_into_vec().unwrap();
        let fc: Vec<f32> = model.fc.weight.val().into_data().try_into_vec().unwrap();
        assert_eq!(maps.len(), 4);
        for (i, (map, &class)) in maps.iter().zip(&classes).enumerate() {
            assert_eq!((map.height, map.width, map.values.len()), (h, w, h * w));
            let grads: Vec<f32> = (0..c)
                .flat_map(|ch| vec![fc[ch * 2 + class] / (h * w) as f32; h * w])
                .collect();
            let expected = gradcam_map(&acts[i * c * h * w..][..c * h * w], &grads, c, h, w);
            for (got, want) in map.values.iter().zip(&expected) {
                assert!(
                    (got - want).abs() < 1e-4,
                    "{:?} vs {expected:?}",
                    map.values
                );
            }
        }
        let hottest = |map: &HeatMap| map.values.iter().copied().fold(0.0, f32::max);
        for pair in maps.chunks(2) {
            assert_eq!(hottest(&pair[0]).max(hottest(&pair[1])), 1.0, "{pair:?}");
        }
        assert!(gradcam_maps(&model, Vec::new(), size, &[], &device).is_empty());
    }
}
