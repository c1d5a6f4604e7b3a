//! Rotary position embedding frequencies, shared by every backend.

use crate::config::RopeScaling;

/// Llama-3 frequency-dependent rope scaling, in f64 for the frequency math.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position: f64,
}

impl From<RopeScaling> for Llama3Scaling {
    fn from(s: RopeScaling) -> Self {
        Self {
            factor: f64::from(s.factor),
            low_freq_factor: f64::from(s.low_freq_factor),
            high_freq_factor: f64::from(s.high_freq_factor),
            original_max_position: s.original_max_position_embeddings as f64,
        }
    }
}

/// Inverse rotary frequencies, one per pair of head dimensions, with Llama-3 scaling
/// applied when given.
pub fn inv_freq(head_dim: usize, theta: f64, scaling: Option<Llama3Scaling>) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            let f = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
            let f = match scaling {
                None => f,
                Some(s) => {
                    let low_wl = s.original_max_position / s.low_freq_factor;
                    let high_wl = s.original_max_position / s.high_freq_factor;
                    let wl = 2.0 * std::f64::consts::PI / f;
                    if wl < high_wl {
                        f
                    } else if wl > low_wl {
                        f / s.factor
                    } else {
                        let smooth = (s.original_max_position / wl - s.low_freq_factor)
                            / (s.high_freq_factor - s.low_freq_factor);
                        (1.0 - smooth) * f / s.factor + smooth * f
                    }
                }
            };
            f as f32
        })
        .collect()
}
