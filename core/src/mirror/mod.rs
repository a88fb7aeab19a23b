//! Namespace mirroring (mirror.md) as pure functions: the keys under a configurable prefix
//! ([`keys`]), which kinds are mirrored ([`kinds`]), target resolution ([`targets`], with
//! [`glob`] and [`selector`]), rendering, hashing and drift ([`render`]), transforms with their
//! Go-template subset ([`transform`], [`template`]), and the ownership decisions that turn
//! desired and observed state into writes ([`plan`]). The aggregator's `mirror` room does the
//! watching and writing.

pub mod glob;
pub mod keys;
pub mod kinds;
pub mod pass;
pub mod plan;
pub mod render;
pub mod selector;
pub mod targets;
pub mod template;
pub mod transform;
