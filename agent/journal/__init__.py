"""Durable, encrypted call journal and CRM outbox: nothing said or promised on a call is lost
when the process or the CRM dies."""
