pub mod api;
pub mod ini;
