//! The tests' own HTTP client, for requests to the local collector and the admin port:
//! one connection per request over hyper, shaped like the usual client builders
//! (`client.get(url).header(..).send()`). Plain HTTP only.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

/// Makes requests; holds nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct TestClient;

impl TestClient {
    pub fn get(&self, url: impl Into<String>) -> TestRequest {
        self.request("GET", url)
    }

    pub fn post(&self, url: impl Into<String>) -> TestRequest {
        self.request("POST", url)
    }

    pub fn request(&self, method: &str, url: impl Into<String>) -> TestRequest {
        TestRequest {
            method: method.to_owned(),
            url: url.into(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }
}

/// One request to send.
pub struct TestRequest {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl TestRequest {
    pub fn header(mut self, name: &str, value: &str) -> TestRequest {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> TestRequest {
        self.body = body.into();
        self
    }

    /// Sends it on a connection of its own and reads the whole answer.
    pub async fn send(self) -> Result<TestAnswer, String> {
        let url = url::Url::parse(&self.url).map_err(|e| e.to_string())?;
        let host = url.host_str().ok_or("no host")?.to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let path = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        let mut request = hyper::Request::builder()
            .method(self.method.as_str())
            .uri(path)
            .header(hyper::header::HOST, format!("{host}:{port}"));
        for (name, value) in &self.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let request = request
            .body(Full::new(self.body))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(TestAnswer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }
}

/// A whole answer.
pub struct TestAnswer {
    status: u16,
    headers: hyper::HeaderMap,
    body: Bytes,
}

impl TestAnswer {
    pub fn status(&self) -> u16 {
        self.status
    }

    pub fn headers(&self) -> &hyper::HeaderMap {
        &self.headers
    }

    pub async fn bytes(self) -> Result<Bytes, String> {
        Ok(self.body)
    }

    pub async fn text(self) -> Result<String, String> {
        String::from_utf8(self.body.to_vec()).map_err(|e| e.to_string())
    }
}
