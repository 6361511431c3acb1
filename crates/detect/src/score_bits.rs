//! Scores as integers that sort like the floats, for one-key sorts and maxima.

/// `score`'s bits, mapped so that unsigned integer order is `f32::total_cmp`'s
/// order: negative scores reversed below the positive ones.
pub(crate) fn ascending_bits(score: f32) -> u32 {
    let bits = score.to_bits();
    if bits >> 31 == 1 {
        !bits
    } else {
        bits | 1 << 31
    }
}

/// The score that [`ascending_bits`] mapped to `ascending`.
pub(crate) fn from_ascending_bits(ascending: u32) -> f32 {
    f32::from_bits(if ascending >> 31 == 1 {
        ascending & !(1 << 31)
    } else {
        !ascending
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mapping_orders_like_total_cmp_and_inverts() {
        let scores = [
            f32::NEG_INFINITY,
            -3.5,
            -f32::MIN_POSITIVE,
            -0.0,
            0.0,
            f32::MIN_POSITIVE,
            0.25,
            1.0,
            f32::INFINITY,
        ];
        for pair in scores.windows(2) {
            assert!(
                ascending_bits(pair[0]) < ascending_bits(pair[1]),
                "{pair:?}"
            );
        }
        for score in scores {
            assert_eq!(
                from_ascending_bits(ascending_bits(score)).to_bits(),
                score.to_bits()
            );
        }
    }
}
