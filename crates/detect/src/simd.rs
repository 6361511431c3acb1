//! Loops compiled twice, for the build's baseline and for AVX2, picked at run time.
//!
//! The build targets baseline x86-64 (SSE2), so that one binary runs everywhere.
//! The hot loops of the letterbox, the class-score scan and NMS are written as
//! plain Rust that LLVM vectorises; [`kernel!`] compiles each once more with AVX2
//! enabled, and [`Isa::detect`] picks the copy the CPU can run. Both copies run the
//! same Rust, with operations that round the same at any width, so they give the
//! same bits.

/// Which instructions the hot loops are compiled for: the build's baseline
/// (SSE2 on x86-64) or AVX2, chosen at run time. Both run the same Rust code, with
/// integer arithmetic or correctly rounded division only, so they give the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    Baseline,
    /// Only constructed by [`Isa::detect`] on a CPU that has AVX2.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    Avx2,
}

impl Isa {
    /// The widest the CPU runs (std caches the CPUID query, so this is cheap).
    pub(crate) fn detect() -> Isa {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        if std::arch::is_x86_feature_detected!("avx2") {
            return Isa::Avx2;
        }
        Isa::Baseline
    }
}

/// Defines `fn $name(isa: Isa, args…)` running `$body`, inlined into one copy for
/// the baseline target and one compiled with AVX2, so that LLVM vectorises the
/// same loop 8 lanes wide where the CPU allows.
macro_rules! kernel_impl {
    ($(#[$attr:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$attr])*
        fn $name(isa: Isa, $($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn generic($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            #[target_feature(enable = "avx2")]
            fn avx2($($arg: $ty),*) $(-> $ret)? {
                generic($($arg),*)
            }

            match isa {
                Isa::Baseline => generic($($arg),*),
                #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
                // SAFETY: `Isa::Avx2` exists only where `Isa::detect` found AVX2 on this CPU.
                Isa::Avx2 => unsafe { avx2($($arg),*) },
            }
        }
    };
}

pub(crate) use kernel_impl as kernel;
