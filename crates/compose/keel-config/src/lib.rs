//! keel's configuration: one typed [`Settings`] tree, loaded once by the binary and passed down.
//!
//! Layers, later ones winning: built-in defaults, then a TOML file (`keel.toml` in the working
//! directory, or `--config FILE`), then `KEEL_*` environment variables, where `__` separates
//! sections: `KEEL_SERVER__LISTEN=0.0.0.0:8080`, `KEEL_CACHE__USERS__STRATEGY=write-back`.
//! Unknown keys in any layer are an error, so a typo never silently falls back to a default.
//! Environment values are read as TOML scalars or arrays when they look like one (`true`, `42`,
//! `0.5`, `["a", "b"]`) and as strings otherwise; quote a value (`KEEL_X='"42"'`) to force a string.
//!
//! - [`settings`]: the tree, with a doc comment on every key (README's table mirrors them).
//! - [`gateway`]: the `[gateway]` section, whose types keel-gateway owns and this tree composes.
//! - [`secret`]: [`Secret`], a value that never prints.

mod load;
pub mod secret;
pub mod settings;

pub use gateway::*;
/// The `[gateway]` section: its types belong to keel-gateway, which owns its settings.
pub use keel_gateway::settings as gateway;
pub use load::{ConfigError, load};
pub use secret::Secret;
pub use settings::*;
