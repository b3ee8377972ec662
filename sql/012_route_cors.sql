-- CORS per route (issue 13, item 6): the route's policy as the admin API validated it
-- (`allowedOrigins`, `allowedMethods`, `allowedHeaders`, `exposeHeaders`,
-- `allowCredentials`, `maxAgeSecs`); null for a route that answers no preflight.
ALTER TABLE routes ADD COLUMN cors jsonb;
