//! Where a process learns its place in the job: the variables torchrun and
//! Kubeflow's PyTorchJob set.

use std::time::Duration;

use crate::Error;

/// torch.distributed's default collective timeout for gloo and NCCL (30 min).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Which c10d backend carries the collectives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// CPU tensors over TCP; always built.
    Gloo,
    /// CUDA tensors over NCCL; needs the `cuda` feature and a CUDA libtorch,
    /// and tensors on `cuda:LOCAL_RANK`. Tested on one GPU only (`tests/nccl.rs`,
    /// a group of one rank). NCCL's own watchdog, not this crate, decides what a
    /// timeout does to the process (`TORCH_NCCL_ASYNC_ERROR_HANDLING`).
    Nccl,
}

impl std::str::FromStr for Backend {
    type Err = Error;

    /// `gloo` or `nccl`, as torch.distributed names them.
    fn from_str(name: &str) -> Result<Backend, Error> {
        match name.to_ascii_lowercase().as_str() {
            "gloo" => Ok(Backend::Gloo),
            "nccl" => Ok(Backend::Nccl),
            _ => Err(Error::Config {
                field: "backend",
                reason: format!("{name:?} is not one of gloo, nccl"),
            }),
        }
    }
}

/// One process's view of a data-parallel job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistConfig {
    /// Host of rank 0's TCPStore (`MASTER_ADDR`).
    pub master_addr: String,
    /// Port of rank 0's TCPStore (`MASTER_PORT`).
    pub master_port: u16,
    /// Number of processes in the job (`WORLD_SIZE`); 1 means no c10d at all.
    pub world_size: usize,
    /// This process's index in `0..world_size` (`RANK`).
    pub rank: usize,
    /// This process's index on its node (`LOCAL_RANK`), e.g. its CUDA device.
    pub local_rank: usize,
    /// The backend to build.
    pub backend: Backend,
    /// Bound on the rendezvous and on every collective: a dead or stuck peer
    /// turns into an error after this long instead of a hang (`--dist-timeout`).
    pub timeout: Duration,
    /// Network interface gloo binds to (`GLOO_SOCKET_IFNAME`); default: the
    /// address the host name resolves to, as torch.distributed does.
    pub gloo_interface: Option<String>,
}

impl DistConfig {
    /// A job of one: collectives are identities and no socket is opened.
    pub fn single_process() -> DistConfig {
        DistConfig {
            master_addr: "127.0.0.1".to_owned(),
            master_port: 29500,
            world_size: 1,
            rank: 0,
            local_rank: 0,
            backend: Backend::Gloo,
            timeout: DEFAULT_TIMEOUT,
            gloo_interface: None,
        }
    }

    /// Reads `MASTER_ADDR`, `MASTER_PORT`, `WORLD_SIZE`, `RANK`, `LOCAL_RANK`
    /// (and `GLOO_SOCKET_IFNAME`) from the environment.
    ///
    /// No `WORLD_SIZE` (and no `RANK`), or `WORLD_SIZE=1`, is a single process.
    /// With `WORLD_SIZE` above 1, `RANK`, `MASTER_ADDR` and `MASTER_PORT` must all
    /// be set; `LOCAL_RANK` defaults to 0 (PyTorchJob without torchrun sets none).
    pub fn from_env() -> Result<DistConfig, Error> {
        DistConfig::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`DistConfig::from_env`] over any variable source (tests, config files).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<DistConfig, Error> {
        let mut config = DistConfig::single_process();
        config.gloo_interface = lookup("GLOO_SOCKET_IFNAME").filter(|name| !name.is_empty());
        let rank = lookup("RANK");
        let Some(world_size) = lookup("WORLD_SIZE") else {
            if let Some(rank) = rank {
                return Err(env_error(
                    "WORLD_SIZE",
                    format!("is not set, but RANK is ({rank}); set both or neither"),
                ));
            }
            return Ok(config);
        };
        config.world_size = parse_number("WORLD_SIZE", &world_size)?;
        if config.world_size == 0 {
            return Err(env_error(
                "WORLD_SIZE",
                "must be at least 1, got 0".to_owned(),
            ));
        }
        let Some(rank) = rank else {
            if config.world_size == 1 {
                return Ok(config);
            }
            return Err(env_error(
                "RANK",
                format!(
                    "is not set, but WORLD_SIZE is {}; a multi-process job needs RANK, MASTER_ADDR and MASTER_PORT",
                    config.world_size
                ),
            ));
        };
        config.rank = parse_number("RANK", &rank)?;
        if config.rank >= config.world_size {
            return Err(env_error(
                "RANK",
                format!(
                    "{} is not below WORLD_SIZE {}",
                    config.rank, config.world_size
                ),
            ));
        }
        if let Some(local_rank) = lookup("LOCAL_RANK") {
            config.local_rank = parse_number("LOCAL_RANK", &local_rank)?;
        }
        if config.world_size == 1 {
            return Ok(config);
        }
        config.master_addr = lookup("MASTER_ADDR")
            .filter(|addr| !addr.trim().is_empty())
            .ok_or_else(|| {
                env_error(
                    "MASTER_ADDR",
                    format!("is not set, but WORLD_SIZE is {}", config.world_size),
                )
            })?;
        let port = lookup("MASTER_PORT").ok_or_else(|| {
            env_error(
                "MASTER_PORT",
                format!("is not set, but WORLD_SIZE is {}", config.world_size),
            )
        })?;
        config.master_port = parse_number("MASTER_PORT", &port)?;
        if config.master_port == 0 {
            return Err(env_error("MASTER_PORT", "must not be 0".to_owned()));
        }
        Ok(config)
    }

    /// The same job with another per-operation timeout (`--dist-timeout`).
    pub fn with_timeout(mut self, timeout: Duration) -> DistConfig {
        self.timeout = timeout;
        self
    }

    /// The same job on another backend.
    pub fn with_backend(mut self, backend: Backend) -> DistConfig {
        self.backend = backend;
        self
    }

    /// Whether there is anybody to talk to.
    pub fn is_distributed(&self) -> bool {
        self.world_size > 1
    }
}

fn parse_number<T: std::str::FromStr>(variable: &'static str, value: &str) -> Result<T, Error> {
    value.trim().parse().map_err(|_| {
        env_error(
            variable,
            format!("{value:?} is not a non-negative integer in range"),
        )
    })
}

fn env_error(variable: &'static str, reason: String) -> Error {
    Error::Env { variable, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(vars: &[(&str, &str)], expected: Result<(usize, usize, usize, &str, u16), &str>) {
        let lookup = |name: &str| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        };
        let actual = DistConfig::from_lookup(lookup)
            .map(|config| {
                (
                    config.world_size,
                    config.rank,
                    config.local_rank,
                    config.master_addr,
                    config.master_port,
                )
            })
            .map_err(|error| error.to_string());
        let expected = expected
            .map(|(world_size, rank, local_rank, addr, port)| {
                (world_size, rank, local_rank, addr.to_owned(), port)
            })
            .map_err(str::to_owned);
        assert_eq!(actual, expected, "vars {vars:?}");
    }

    #[test]
    fn nothing_set_is_a_single_process() {
        check(&[], Ok((1, 0, 0, "127.0.0.1", 29500)));
        check(&[("WORLD_SIZE", "1")], Ok((1, 0, 0, "127.0.0.1", 29500)));
        check(
            &[("WORLD_SIZE", "1"), ("RANK", "0"), ("LOCAL_RANK", "0")],
            Ok((1, 0, 0, "127.0.0.1", 29500)),
        );
    }

    #[test]
    fn backend_names_parse() {
        assert_eq!("gloo".parse::<Backend>().ok(), Some(Backend::Gloo));
        assert_eq!("NCCL".parse::<Backend>().ok(), Some(Backend::Nccl));
        let error = "mpi".parse::<Backend>().expect_err("not built");
        assert_eq!(
            error.to_string(),
            "invalid backend: \"mpi\" is not one of gloo, nccl"
        );
    }

    #[test]
    fn torchrun_variables_are_read() {
        check(
            &[
                ("MASTER_ADDR", "10.0.0.7"),
                ("MASTER_PORT", "29400"),
                ("WORLD_SIZE", "4"),
                ("RANK", "3"),
                ("LOCAL_RANK", "1"),
            ],
            Ok((4, 3, 1, "10.0.0.7", 29400)),
        );
    }

    #[test]
    fn pytorchjob_without_local_rank_defaults_it_to_zero() {
        check(
            &[
                ("MASTER_ADDR", "job-master-0"),
                ("MASTER_PORT", "23456"),
                ("WORLD_SIZE", "2"),
                ("RANK", "1"),
            ],
            Ok((2, 1, 0, "job-master-0", 23456)),
        );
    }

    #[test]
    fn half_set_or_bad_values_name_the_variable() {
        check(
            &[("WORLD_SIZE", "2")],
            Err(
                "environment variable RANK: is not set, but WORLD_SIZE is 2; a multi-process job needs RANK, MASTER_ADDR and MASTER_PORT",
            ),
        );
        check(
            &[("RANK", "0")],
            Err(
                "environment variable WORLD_SIZE: is not set, but RANK is (0); set both or neither",
            ),
        );
        check(
            &[("WORLD_SIZE", "two")],
            Err("environment variable WORLD_SIZE: \"two\" is not a non-negative integer in range"),
        );
        check(
            &[("WORLD_SIZE", "0")],
            Err("environment variable WORLD_SIZE: must be at least 1, got 0"),
        );
        check(
            &[("WORLD_SIZE", "2"), ("RANK", "2")],
            Err("environment variable RANK: 2 is not below WORLD_SIZE 2"),
        );
        check(
            &[("WORLD_SIZE", "2"), ("RANK", "1"), ("MASTER_PORT", "29500")],
            Err("environment variable MASTER_ADDR: is not set, but WORLD_SIZE is 2"),
        );
        check(
            &[
                ("WORLD_SIZE", "2"),
                ("RANK", "1"),
                ("MASTER_ADDR", "127.0.0.1"),
            ],
            Err("environment variable MASTER_PORT: is not set, but WORLD_SIZE is 2"),
        );
        check(
            &[
                ("WORLD_SIZE", "2"),
                ("RANK", "1"),
                ("MASTER_ADDR", "127.0.0.1"),
                ("MASTER_PORT", "70000"),
            ],
            Err(
                "environment variable MASTER_PORT: \"70000\" is not a non-negative integer in range",
            ),
        );
        check(
            &[("WORLD_SIZE", "2"), ("RANK", "-1")],
            Err("environment variable RANK: \"-1\" is not a non-negative integer in range"),
        );
    }
}
