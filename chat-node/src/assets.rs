//! The demo page, embedded at build time (whole folders, so adding a file needs no code
//! change): `GET /` -> `chat-node/assets/index.html`, `GET /assets/<path>` -> `chat-node/assets/`,
//! `GET /client/<path>` -> `clients/js/src/`.

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "assets/"]
struct DemoAssets;

#[derive(RustEmbed)]
#[folder = "../clients/js/src/"]
struct ClientAssets;

fn serve<E: RustEmbed>(path: &str) -> Response {
    let path = path.trim_start_matches('/');
    match E::get(path) {
        Some(file) => {
            let mime = file.metadata.mimetype();
            let mime = if mime.starts_with("text/") || mime == "application/javascript" {
                format!("{mime}; charset=utf-8")
            } else {
                mime.to_owned()
            };
            let mut response = (StatusCode::OK, file.data.into_owned()).into_response();
            if let Ok(value) = HeaderValue::from_str(&mime) {
                response.headers_mut().insert(CONTENT_TYPE, value);
            }
            response
                .headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response
        }
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

pub async fn index() -> Response {
    serve::<DemoAssets>("index.html")
}

pub async fn demo_asset(Path(path): Path<String>) -> Response {
    serve::<DemoAssets>(&path)
}

pub async fn client_asset(Path(path): Path<String>) -> Response {
    serve::<ClientAssets>(&path)
}
