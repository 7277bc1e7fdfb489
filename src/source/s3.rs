//! `s3://bucket/key` through the AWS SDK: the default credential and region
//! chain, `AWS_ENDPOINT_URL`/`AWS_ENDPOINT_URL_S3` for S3-compatible stores,
//! and `AWS_S3_FORCE_PATH_STYLE=true` for path-style addressing.

use anyhow::{anyhow, Result};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;
use tokio::sync::OnceCell;
use url::Url;

use super::{bucket_and_key, content_range, Object, Permanent, Range, RangeMiss, Ranged};

async fn client() -> Result<&'static aws_sdk_s3::Client> {
    static CLIENT: OnceCell<aws_sdk_s3::Client> = OnceCell::const_new();
    CLIENT
        .get_or_try_init(|| async {
            let shared = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
            let Some(region) = shared.region().filter(|r| !r.as_ref().is_empty()) else {
                return Err(anyhow!(Permanent(
                    "no AWS region configured: set AWS_REGION, or a region in the AWS_PROFILE's config"
                        .into()
                )));
            };
            log::info!("region: {region}");
            let path_style = std::env::var("AWS_S3_FORCE_PATH_STYLE")
                .is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
            let config = aws_sdk_s3::config::Builder::from(&shared)
                .force_path_style(path_style)
                .build();
            Ok(aws_sdk_s3::Client::from_conf(config))
        })
        .await
}

/// Starts a GetObject and returns the body as a stream.
pub async fn open(url: &Url) -> Result<Object> {
    let (bucket, key) = bucket_and_key(url)?;
    let output = client()
        .await?
        .get_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .map_err(|e| describe(e, url))?;
    let size = output.content_length().and_then(|n| u64::try_from(n).ok());
    Ok(Object {
        body: Box::new(output.body.into_async_read()),
        size,
    })
}

/// A GetObject of `range` (with `If-Match` when `etag` is given).
pub async fn open_range(url: &Url, range: Range, etag: Option<&str>) -> Result<Ranged> {
    let (bucket, key) = bucket_and_key(url)?;
    let output = client()
        .await?
        .get_object()
        .bucket(&bucket)
        .key(&key)
        .range(range.header())
        .set_if_match(etag.map(str::to_string))
        .send()
        .await
        .map_err(|e| match e.raw_response().map(|r| r.status().as_u16()) {
            Some(412) => anyhow!(RangeMiss::Changed),
            _ => describe(e, url),
        })?;
    let Some((start, len, total)) = output.content_range().and_then(content_range) else {
        return Err(RangeMiss::NoRanges.into());
    };
    let etag = output.e_tag().map(str::to_string);
    Ok(Ranged {
        body: Box::new(output.body.into_async_read()),
        start,
        len,
        total,
        etag,
    })
}

/// One line naming the URL (and so bucket and key) and the cause, chosen
/// by the SDK's error kind and S3's error code. Every one of them is worth
/// another attempt: a key may appear (an upload racing the deploy), a grant
/// or a credential may land.
fn describe(err: SdkError<GetObjectError>, url: &Url) -> anyhow::Error {
    let what = match &err {
        SdkError::ServiceError(e) => match e.err() {
            GetObjectError::NoSuchKey(_) => "no such key".to_string(),
            GetObjectError::InvalidObjectState(_) => {
                "the object is archived (InvalidObjectState)".to_string()
            }
            other => match (other.code(), e.raw().status().as_u16()) {
                (Some("NoSuchBucket"), _) => "no such bucket".to_string(),
                (Some("AccessDenied" | "AllAccessDisabled"), _) => "access denied".to_string(),
                (
                    Some(
                        code @ ("InvalidAccessKeyId"
                        | "SignatureDoesNotMatch"
                        | "ExpiredToken"
                        | "InvalidToken"),
                    ),
                    _,
                ) => format!("credentials rejected ({code})"),
                (_, 404) => "not found".to_string(),
                (code, 403) => format!("access denied ({})", code.unwrap_or("403")),
                _ => DisplayErrorContext(&err).to_string(),
            },
        },
        SdkError::DispatchFailure(e) if e.is_io() => {
            format!("cannot reach S3: {}", DisplayErrorContext(&err))
        }
        SdkError::TimeoutError(_) => "request timed out".to_string(),
        _ => DisplayErrorContext(&err).to_string(),
    };
    anyhow!("{url}: {what}")
}
