"""Where pixels come from: Label Studio (tokens, /setup state), URLs under the policy, local files, object storage."""
