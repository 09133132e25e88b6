pub mod api;
pub mod ini;
pub mod tls;
