//! The images of a `tools/call` result, for a model: image blocks, embedded resources whose
//! blob is an image, and base64 images inside structured content. The model gets them as
//! images where its provider accepts them (the connection layer decides) and a placeholder
//! in the text; the blob itself never goes into text.

use concerto_vm::host::ImagePart;
use rmcp::model::{CallToolResult, ContentBlock, ResourceContents};
use serde_json::Value;

/// The images among `result`'s content blocks, in order.
pub(super) fn of_content(result: &CallToolResult) -> Vec<ImagePart> {
    result
        .content
        .iter()
        .filter_map(|block| match block {
            ContentBlock::Image(image) => Some(ImagePart {
                mime_type: image.mime_type.clone(),
                data: image.data.clone(),
            }),
            ContentBlock::Resource(res) => match &res.resource {
                ResourceContents::BlobResourceContents {
                    mime_type: Some(mime_type),
                    blob,
                    ..
                } if is_image_type(mime_type) => Some(ImagePart {
                    mime_type: mime_type.clone(),
                    data: blob.clone(),
                }),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Moves every base64 image out of structured content `value` into `images`, leaving the
/// placeholder `[image (TYPE)]` in its place. An image is an object with a string `data`
/// or `blob` and an image media type in `mimeType`, `mime_type` or `media_type`.
pub(super) fn take_from_structured(value: &mut Value, images: &mut Vec<ImagePart>, depth: usize) {
    if depth > 64 {
        return;
    }
    match value {
        Value::Object(map) => {
            let mime_type = ["mimeType", "mime_type", "media_type"]
                .iter()
                .find_map(|key| map.get(*key).and_then(Value::as_str))
                .filter(|m| is_image_type(m))
                .map(str::to_string);
            if let Some(mime_type) = mime_type {
                for key in ["data", "blob"] {
                    if let Some(Value::String(data)) = map.get_mut(key) {
                        images.push(ImagePart {
                            mime_type: mime_type.clone(),
                            data: std::mem::replace(data, placeholder(&mime_type)),
                        });
                        return;
                    }
                }
            }
            for item in map.values_mut() {
                take_from_structured(item, images, depth + 1);
            }
        }
        Value::Array(items) => {
            for item in items {
                take_from_structured(item, images, depth + 1);
            }
        }
        _ => {}
    }
}

/// What stands for an image in text.
pub(super) fn placeholder(mime_type: &str) -> String {
    format!("[image ({mime_type})]")
}

fn is_image_type(mime_type: &str) -> bool {
    mime_type
        .get(..6)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("image/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn images_in_structured_content_are_taken_out_and_named() {
        let mut value = json!({
            "caption": "a dot",
            "picture": {"mimeType": "image/png", "data": "iVBORw0KGgo"},
            "nested": [{"media_type": "IMAGE/JPEG", "blob": "/9j/4AAQ"}],
            "audio": {"mimeType": "audio/wav", "data": "UklGRg"},
            "note": {"mimeType": "image/png"}
        });
        let mut images = Vec::new();
        take_from_structured(&mut value, &mut images, 0);
        // In the order of the map's keys, whatever that order is.
        images.sort_by(|a, b| a.data.cmp(&b.data));
        assert_eq!(
            images,
            vec![
                ImagePart {
                    mime_type: "IMAGE/JPEG".into(),
                    data: "/9j/4AAQ".into()
                },
                ImagePart {
                    mime_type: "image/png".into(),
                    data: "iVBORw0KGgo".into()
                },
            ]
        );
        assert_eq!(value["picture"]["data"], "[image (image/png)]");
        assert_eq!(value["nested"][0]["blob"], "[image (IMAGE/JPEG)]");
        // Not an image, or no data: left alone.
        assert_eq!(value["audio"]["data"], "UklGRg");
        assert_eq!(value["note"], json!({"mimeType": "image/png"}));
    }

    #[test]
    fn images_among_content_blocks_are_found_in_order() {
        let result: CallToolResult = serde_json::from_value(json!({
            "content": [
                {"type": "text", "text": "here"},
                {"type": "image", "data": "R0lGOD", "mimeType": "image/gif"},
                {"type": "resource", "resource": {"uri": "file:///a.png", "mimeType": "image/png", "blob": "iVBOR"}},
                {"type": "resource", "resource": {"uri": "file:///a.bin", "mimeType": "application/octet-stream", "blob": "AAAA"}}
            ]
        }))
        .unwrap();
        let images = of_content(&result);
        assert_eq!(
            images
                .iter()
                .map(|i| (i.mime_type.as_str(), i.data.as_str()))
                .collect::<Vec<_>>(),
            [("image/gif", "R0lGOD"), ("image/png", "iVBOR")]
        );
    }
}
