//! Which items a rank sees in an epoch, in which order, and at which batch shape.
//!
//! The order follows PyTorch's `DistributedSampler`: the whole dataset's order for
//! the epoch (a permutation seeded by `seed + epoch` when shuffling, the dataset's
//! order otherwise, or the aspect-ratio order for rectangular batches) is padded by
//! wrapping around to a multiple of `world_size`, and rank `r` takes every
//! `world_size`-th position starting at `r`.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::config::{LoaderConfig, RECT_PAD, STRIDE};

/// The dataset's order for `epoch`, before sharding.
pub fn epoch_order(
    n_items: usize,
    epoch: u64,
    config: &LoaderConfig,
    base_order: &[usize],
) -> Vec<usize> {
    let mut order: Vec<usize> = if base_order.len() == n_items {
        base_order.to_vec()
    } else {
        (0..n_items).collect()
    };
    if config.shuffle {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed.wrapping_add(epoch));
        order.shuffle(&mut rng);
    }
    order
}

/// Rank `rank`'s items of an epoch order, `DistributedSampler`-style (padded by
/// repeating the order from its start so every rank sees the same count).
pub fn shard(order: &[usize], rank: usize, world_size: usize) -> Vec<usize> {
    if order.is_empty() || world_size == 0 {
        return Vec::new();
    }
    let per_rank = order.len().div_ceil(world_size);
    let total = per_rank * world_size;
    (rank..total)
        .step_by(world_size)
        .map(|position| order[position % order.len()])
        .collect()
}

/// Items per rank and epoch, and batches per rank and epoch.
pub fn rank_counts(n_items: usize, config: &LoaderConfig) -> (usize, usize) {
    let per_rank = n_items.div_ceil(config.world_size.max(1));
    let batch_size = config.batch_size.max(1);
    if config.drop_last {
        let n_batches = per_rank / batch_size;
        (n_batches * batch_size, n_batches)
    } else {
        (per_rank, per_rank.div_ceil(batch_size))
    }
}

/// Ultralytics' rectangular order: indices sorted by aspect ratio `h / w` (stable).
pub fn aspect_ratio_order(sizes: &[(u32, u32)]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by(|&a, &b| aspect_ratio(sizes[a]).total_cmp(&aspect_ratio(sizes[b])));
    order
}

/// Ultralytics' `set_rectangle` shape of one batch of images of `sizes` (original
/// `(w, h)`), as `(width, height)`: the batch's extreme aspect ratio sets the short
/// side, `ceil(side * imgsz / 32 + 0.5) * 32`.
pub fn rect_batch_shape(sizes: &[(u32, u32)], imgsz: u32) -> (u32, u32) {
    let ratios = sizes.iter().map(|&size| aspect_ratio(size));
    let min = ratios.clone().fold(f64::INFINITY, f64::min);
    let max = ratios.fold(f64::NEG_INFINITY, f64::max);
    let (relative_height, relative_width) = if max < 1.0 {
        (max, 1.0)
    } else if min > 1.0 {
        (1.0, 1.0 / min)
    } else {
        (1.0, 1.0)
    };
    let stride = f64::from(STRIDE);
    let side = |relative: f64| {
        ((relative * f64::from(imgsz) / stride + RECT_PAD).ceil() * stride).max(stride) as u32
    };
    (side(relative_width), side(relative_height))
}

fn aspect_ratio((width, height): (u32, u32)) -> f64 {
    f64::from(height) / f64::from(width.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_shape(sizes: &[(u32, u32)], imgsz: u32, expected: (u32, u32)) {
        assert_eq!(rect_batch_shape(sizes, imgsz), expected, "{sizes:?}");
    }

    #[test]
    fn rect_shapes_follow_set_rectangle() {
        // ar 0.75: h = ceil(0.75 * 20 + 0.5) * 32 = 512, w = ceil(20.5) * 32 = 672.
        check_shape(&[(640, 480), (800, 600)], 640, (672, 512));
        // Tall images: ar > 1, width from the smallest ratio.
        check_shape(&[(300, 600), (400, 600)], 640, (448, 672));
        // Mixed batch: square.
        check_shape(&[(300, 600), (600, 300)], 640, (672, 672));
    }

    #[test]
    fn shards_pad_by_wrapping_around() {
        let order = vec![4, 0, 3, 1, 2];
        assert_eq!(shard(&order, 0, 2), vec![4, 3, 2]);
        assert_eq!(shard(&order, 1, 2), vec![0, 1, 4]);
        assert_eq!(shard(&order, 0, 1), order);
    }
}
