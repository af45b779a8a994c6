//! object_store's S3, GCS and Azure clients over our reqwest 0.12 (rustls with the ring
//! provider, webpki roots).
//!
//! object_store 0.14 ships a connector for reqwest 0.13, whose rustls needs either aws-lc-rs
//! (aws-lc-sys) or a process-wide crypto provider; enabling its rustls makes every other reqwest
//! 0.13 client in the process (the OTel exporter's, in tests) panic for want of a provider. This
//! connector keeps S3 on the reqwest/rustls/ring stack the gateway already uses.

use std::time::Duration;

use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse,
    HttpResponseBody, HttpService,
};
use object_store::{ClientConfigKey, ClientOptions};

#[derive(Debug, Clone)]
pub struct Reqwest012Connector {
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
struct Service(reqwest::Client);

fn kind(e: &reqwest::Error) -> HttpErrorKind {
    if e.is_timeout() {
        HttpErrorKind::Timeout
    } else if e.is_connect() {
        HttpErrorKind::Connect
    } else if e.is_decode() {
        HttpErrorKind::Decode
    } else if e.is_request() || e.is_body() {
        HttpErrorKind::Request
    } else {
        HttpErrorKind::Unknown
    }
}

fn err(e: reqwest::Error) -> HttpError {
    HttpError::new(kind(&e), e)
}

#[async_trait::async_trait]
impl HttpService for Service {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        use http_body_util::BodyExt;
        let (parts, body) = req.into_parts();
        let body = match body.as_bytes() {
            Some(b) => b.clone(),
            None => body.collect().await?.to_bytes(),
        };
        let url = reqwest::Url::parse(&parts.uri.to_string())
            .map_err(|e| HttpError::new(HttpErrorKind::Request, e))?;
        let mut r = reqwest::Request::new(parts.method, url);
        *r.headers_mut() = parts.headers;
        *r.body_mut() = Some(reqwest::Body::from(body));
        let resp = self.0.execute(r).await.map_err(err)?;
        let mut out = http::Response::builder().status(resp.status());
        if let Some(h) = out.headers_mut() {
            *h = resp.headers().clone();
        }
        // Archive objects are read whole anyway: collect the body here.
        let bytes = resp.bytes().await.map_err(err)?;
        out.body(HttpResponseBody::from(bytes))
            .map_err(|e| HttpError::new(HttpErrorKind::Unknown, e))
    }
}

impl HttpConnector for Reqwest012Connector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let allow_http = options
            .get_config_value(&ClientConfigKey::AllowHttp)
            .is_some_and(|v| v == "true");
        let mut builder = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.timeout)
            .https_only(!allow_http);
        // The writers' key headers (cloud.rs: CMEK, encryption scope) ride on every request.
        if let Some(h) = options.get_default_headers() {
            builder = builder.default_headers(h.clone());
        }
        let client = builder.build().map_err(|e| object_store::Error::Generic {
            store: "archive",
            source: Box::new(e),
        })?;
        Ok(HttpClient::new(Service(client)))
    }
}
