//! The plain-HTTP transport: hyper's HTTP/1.1 client over keep-alive connections, for a
//! collector reached over `http://` with no proxy and no credentials in its URL (a
//! collector beside the relay, or a TLS-terminating sidecar). A request is made from the
//! bytes the encoder already wrote, with one `http::Uri` parse: no `url::Url` round trip,
//! no redirect layer, no per-request header map beyond what is sent. Anything else (TLS,
//! a proxy, a URL with a user) goes through reqwest ([`super::client`]), which this must
//! behave like: the same headers, the same timeout (connect to the last byte of the
//! answer), no redirects followed, a small answer read so its connection is reused.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderValue, LOCATION, USER_AGENT};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::client::{MAX_RESPONSE_BODY_BYTES, error_chain};

/// What the collector answered: its status, and where it redirects to (if it does).
pub(crate) struct Answer {
    pub status: u16,
    pub location: Option<String>,
}

/// Keep-alive HTTP/1.1 connections to one plain-HTTP collector.
#[derive(Clone)]
pub(crate) struct Plain {
    client: Client<HttpConnector, Full<Bytes>>,
    user_agent: HeaderValue,
    anonymous: bool,
    timeout: Duration,
}

impl Plain {
    /// Connections with `timeout` for each request (and for each connect), keeping up to
    /// `max_idle` idle ones.
    pub fn new(timeout: Duration, max_idle: usize, anonymous: bool) -> Plain {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(max_idle)
            .build(connector);
        Plain {
            client,
            user_agent: HeaderValue::from_static(super::USER_AGENT),
            anonymous,
            timeout,
        }
    }

    /// One request to `target` (an `http://` URL): a POST of `body`, or a GET. The
    /// answer's body is read (up to [`MAX_RESPONSE_BODY_BYTES`]) so that the connection
    /// can serve the next request. The error text never holds the URL.
    pub async fn send(&self, target: Bytes, body: Option<Bytes>) -> Result<Answer, String> {
        let uri = Uri::from_maybe_shared(target).map_err(|e| format!("not a request URL: {e}"))?;
        let mut request = Request::new(Full::new(body.clone().unwrap_or_default()));
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(USER_AGENT, self.user_agent.clone());
        headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
        if self.anonymous {
            headers.insert("sp-anonymous", HeaderValue::from_static("*"));
        }
        if body.is_some() {
            *request.method_mut() = Method::POST;
            request.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            );
        }
        let exchange = async {
            let mut response = self
                .client
                .request(request)
                .await
                .map_err(|e| error_chain(&e))?;
            let status = response.status().as_u16();
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            // Read a small body so the connection goes back to the pool; never a large
            // one (dropped with its connection).
            let mut read = 0;
            while read <= MAX_RESPONSE_BODY_BYTES {
                match response.body_mut().frame().await {
                    Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
                    _ => break,
                }
            }
            Ok(Answer { status, location })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(answer) => answer,
            Err(_) => Err(format!("no complete answer within {:?}", self.timeout)),
        }
    }
}
