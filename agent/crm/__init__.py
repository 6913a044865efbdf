"""GoHighLevel (LeadConnector API v2) CRM: client, rate limiting, argument checks and agent tools."""
