//! Gradient averaging the way DDP does it: few large all-reduces instead of one
//! per parameter, optionally on half-width copies.

use tch::{Kind, Tensor};

use crate::Error;
use crate::group::{ProcessGroup, ReduceOp};

/// DDP's default `bucket_cap_mb`.
pub const DEFAULT_BUCKET_CAP_MB: f64 = 25.0;

/// What travels over the wire during gradient averaging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// The gradients' own dtype.
    #[default]
    None,
    /// IEEE half (10-bit mantissa, overflows above 65504); DDP's `fp16_compress_hook`.
    Fp16,
    /// bfloat16 (7-bit mantissa, f32's range); DDP's `bf16_compress_hook`.
    Bf16,
}

/// Averages gradients over a [`ProcessGroup`] in buckets of at most
/// `bucket_cap_mb` (a single larger gradient gets a bucket of its own).
///
/// ```no_run
/// # fn demo(grads: &[tch::Tensor]) -> Result<(), cardet_c10d::Error> {
/// use cardet_c10d::{Compression, DistConfig, GradientBuckets, ProcessGroup};
/// let group = ProcessGroup::new(&DistConfig::from_env()?)?;
/// let buckets = GradientBuckets::new(25.0, Compression::Fp16)?;
/// buckets.all_reduce_average(&group, grads)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct GradientBuckets {
    bucket_cap_bytes: usize,
    compression: Compression,
}

impl Default for GradientBuckets {
    fn default() -> GradientBuckets {
        GradientBuckets {
            bucket_cap_bytes: cap_bytes(DEFAULT_BUCKET_CAP_MB),
            compression: Compression::None,
        }
    }
}

impl GradientBuckets {
    /// Buckets of `bucket_cap_mb` mebibytes (as DDP counts them, in the
    /// gradients' own dtype), sent with `compression`.
    pub fn new(bucket_cap_mb: f64, compression: Compression) -> Result<GradientBuckets, Error> {
        if !(bucket_cap_mb.is_finite() && bucket_cap_mb > 0.0) {
            return Err(Error::Config {
                field: "bucket_cap_mb",
                reason: format!("{bucket_cap_mb} is not a positive number"),
            });
        }
        Ok(GradientBuckets {
            bucket_cap_bytes: cap_bytes(bucket_cap_mb),
            compression,
        })
    }

    /// The compression in use.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Replaces every gradient, in place, by its mean over the ranks.
    ///
    /// Gradients are grouped in order into buckets of one dtype and device,
    /// each bucket is flattened into one tensor, all buckets are all-reduced
    /// together, and the results are copied back. With compression the flat
    /// bucket is divided by the world size first and then cast: DDP's hooks
    /// divide before the sum so that the half-width sum cannot overflow.
    pub fn all_reduce_average(&self, group: &ProcessGroup, grads: &[Tensor]) -> Result<(), Error> {
        check_gradients(grads)?;
        if group.world_size() == 1 || grads.is_empty() {
            return Ok(());
        }
        let _no_grad = tch::no_grad_guard();
        let buckets = self.plan(grads);
        let world_size = group.world_size() as f64;
        let mut flats = Vec::with_capacity(buckets.len());
        // Buckets reduced directly in the gradient's own storage, with no copy.
        let mut in_place = Vec::with_capacity(buckets.len());
        for bucket in &buckets {
            let sole_member = match bucket.as_slice() {
                [grad_idx] if grads[*grad_idx].is_contiguous() => Some(&grads[*grad_idx]),
                _ => None,
            };
            let flat = match sole_member {
                // A view: one large gradient needs no flattening copy.
                Some(grad) => grad.f_view([-1]),
                None => {
                    let members: Vec<Tensor> = bucket
                        .iter()
                        .map(|&grad_idx| grads[grad_idx].reshape(-1))
                        .collect();
                    Tensor::f_cat(&members, 0)
                }
            }
            .map_err(torch_error("flattening a gradient bucket"))?;
            let flat = match self.compression.wire_kind() {
                None => flat,
                Some(kind) => flat
                    .f_div_scalar(world_size)
                    .and_then(|scaled| scaled.f_to_kind(kind))
                    .map_err(torch_error("compressing a gradient bucket"))?,
            };
            in_place.push(sole_member.is_some() && self.compression == Compression::None);
            flats.push(flat);
        }
        let op = match self.compression {
            Compression::None => ReduceOp::Average,
            // Already divided before the cast.
            Compression::Fp16 | Compression::Bf16 => ReduceOp::Sum,
        };
        group.all_reduce(&flats, op)?;
        for ((bucket, flat), in_place) in buckets.iter().zip(&flats).zip(in_place) {
            if in_place {
                continue;
            }
            let mut offset = 0_i64;
            for &grad_idx in bucket {
                let grad = &grads[grad_idx];
                let numel = grad.numel() as i64;
                // copy_ casts from the wire dtype back to the gradient's.
                let reduced = flat
                    .f_narrow(0, offset, numel)
                    .and_then(|slice| slice.f_view(grad.size().as_slice()))
                    .map_err(torch_error("unflattening a gradient bucket"))?;
                grad.shallow_clone()
                    .f_copy_(&reduced)
                    .map_err(torch_error("copying an averaged gradient back"))?;
                offset += numel;
            }
        }
        Ok(())
    }

    /// Indices of `grads` per bucket: consecutive gradients of one dtype and
    /// device while the bucket stays within the cap.
    fn plan(&self, grads: &[Tensor]) -> Vec<Vec<usize>> {
        let mut buckets: Vec<Vec<usize>> = Vec::new();
        let mut bucket_bytes = 0_usize;
        for (grad_idx, grad) in grads.iter().enumerate() {
            let grad_bytes = grad.numel() * grad.kind().elt_size_in_bytes();
            let joins_last = buckets.last().is_some_and(|bucket| {
                let first = &grads[bucket[0]];
                first.kind() == grad.kind()
                    && first.device() == grad.device()
                    && bucket_bytes + grad_bytes <= self.bucket_cap_bytes
            });
            if joins_last {
                bucket_bytes += grad_bytes;
                if let Some(bucket) = buckets.last_mut() {
                    bucket.push(grad_idx);
                }
            } else {
                buckets.push(vec![grad_idx]);
                bucket_bytes = grad_bytes;
            }
        }
        buckets
    }
}

impl std::str::FromStr for Compression {
    type Err = Error;

    /// `none`, `fp16` or `bf16`, as a `--grad-compression` flag spells them.
    fn from_str(name: &str) -> Result<Compression, Error> {
        match name.to_ascii_lowercase().as_str() {
            "none" => Ok(Compression::None),
            "fp16" => Ok(Compression::Fp16),
            "bf16" => Ok(Compression::Bf16),
            _ => Err(Error::Config {
                field: "compression",
                reason: format!("{name:?} is not one of none, fp16, bf16"),
            }),
        }
    }
}

impl Compression {
    fn wire_kind(self) -> Option<Kind> {
        match self {
            Compression::None => None,
            Compression::Fp16 => Some(Kind::Half),
            Compression::Bf16 => Some(Kind::BFloat16),
        }
    }
}

fn check_gradients(grads: &[Tensor]) -> Result<(), Error> {
    for (tensor_idx, grad) in grads.iter().enumerate() {
        let reason = if !grad.defined() {
            "gradient is undefined (a parameter that took no part in the loss?); zero it instead"
                .to_owned()
        } else if !grad.is_floating_point() {
            format!(
                "gradient has dtype {:?}, not a floating-point type",
                grad.kind()
            )
        } else {
            continue;
        };
        return Err(Error::InvalidTensor {
            operation: "all_reduce_gradients",
            tensor_idx,
            reason,
        });
    }
    Ok(())
}

fn cap_bytes(bucket_cap_mb: f64) -> usize {
    (bucket_cap_mb * 1024.0 * 1024.0) as usize
}

fn torch_error(operation: &'static str) -> impl Fn(tch::TchError) -> Error {
    move |source| Error::Torch { operation, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(cap_bytes: usize, grads: &[(i64, Kind)], expected: &[&[usize]]) {
        let grads: Vec<Tensor> = grads
            .iter()
            .map(|&(numel, kind)| Tensor::zeros([numel], (kind, tch::Device::Cpu)))
            .collect();
        let buckets = GradientBuckets {
            bucket_cap_bytes: cap_bytes,
            compression: Compression::None,
        };
        let expected: Vec<Vec<usize>> = expected.iter().map(|bucket| bucket.to_vec()).collect();
        assert_eq!(buckets.plan(&grads), expected);
    }

    #[test]
    fn buckets_fill_up_to_the_cap_in_order() {
        // 4-byte floats, cap 40 bytes = 10 floats.
        check(
            40,
            &[
                (4, Kind::Float),
                (6, Kind::Float),
                (1, Kind::Float),
                (9, Kind::Float),
            ],
            &[&[0, 1], &[2, 3]],
        );
    }

    #[test]
    fn a_gradient_above_the_cap_gets_its_own_bucket() {
        check(
            40,
            &[(2, Kind::Float), (50, Kind::Float), (2, Kind::Float)],
            &[&[0], &[1], &[2]],
        );
    }

    #[test]
    fn a_dtype_change_starts_a_new_bucket() {
        check(
            1024,
            &[
                (2, Kind::Float),
                (2, Kind::Double),
                (2, Kind::Double),
                (2, Kind::Float),
            ],
            &[&[0], &[1, 2], &[3]],
        );
    }

    #[test]
    fn integer_and_undefined_gradients_are_refused_with_their_index() {
        let group = ProcessGroup::new(&crate::DistConfig::single_process()).expect("group of one");
        let buckets = GradientBuckets::default();
        let grads = [
            Tensor::zeros([2], (Kind::Float, tch::Device::Cpu)),
            Tensor::zeros([2], (Kind::Int64, tch::Device::Cpu)),
        ];
        let error = buckets
            .all_reduce_average(&group, &grads)
            .expect_err("int64 gradient");
        assert_eq!(
            error.to_string(),
            "all_reduce_gradients: tensor 1: gradient has dtype Int64, not a floating-point type"
        );
        let grads = [Tensor::new()];
        let error = buckets
            .all_reduce_average(&group, &grads)
            .expect_err("undefined gradient");
        assert!(
            error
                .to_string()
                .starts_with("all_reduce_gradients: tensor 0: gradient is undefined"),
            "{error}"
        );
    }

    #[test]
    fn compression_names_parse() {
        let parsed: Vec<Result<Compression, String>> = ["none", "FP16", "bf16", "int8"]
            .iter()
            .map(|name| {
                name.parse::<Compression>()
                    .map_err(|error| error.to_string())
            })
            .collect();
        assert_eq!(
            parsed,
            [
                Ok(Compression::None),
                Ok(Compression::Fp16),
                Ok(Compression::Bf16),
                Err("invalid compression: \"int8\" is not one of none, fp16, bf16".to_owned()),
            ]
        );
    }

    #[test]
    fn bucket_cap_must_be_positive() {
        for bad in [0.0, -1.0, f64::NAN] {
            let error = GradientBuckets::new(bad, Compression::None).expect_err("bad cap");
            assert!(
                error.to_string().starts_with("invalid bucket_cap_mb:"),
                "{error}"
            );
        }
    }
}
