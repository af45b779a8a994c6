# PrivateLink endpoint service in front of the tracegate gateways (docs/privatelink.md):
#   customer VPC endpoint -> endpoint service -> internal NLB (TCP, TLS passthrough)
#   -> target groups (PROXY protocol v2 on) -> gateway pods :4318 / :4317
# tracegate terminates TLS itself and reads the PROXY v2 header (client address and VPC endpoint
# id, TLV 0xEA), so API keys can be restricted to a customer's endpoint (keys create --vpce).

resource "aws_lb" "this" {
  # checkov:skip=CKV_AWS_91: NLB access logs are written only for TLS listeners; these are TCP (TLS passthrough). tracegate logs each connection's client address and VPC endpoint id from the PROXY header and audits refusals (docs/privatelink.md); use VPC flow logs for packet-level records.
  name                             = "${var.name}-nlb"
  load_balancer_type               = "network"
  internal                         = true
  subnets                          = var.subnet_ids
  enable_cross_zone_load_balancing = true
  enable_deletion_protection       = var.deletion_protection

  tags = var.tags
}

resource "aws_lb_target_group" "otlp" {
  for_each = var.listeners

  name        = "${var.name}-${each.key}"
  port        = each.value.target_port
  protocol    = "TCP"
  vpc_id      = var.vpc_id
  target_type = var.target_type

  # The NLB prepends a PROXY v2 header with the client address and the endpoint id.
  proxy_protocol_v2 = true

  # Give in-flight requests time to finish (the pods drain for server.shutdown_timeout_ms).
  deregistration_delay = 30

  health_check {
    protocol            = "HTTP"
    port                = tostring(var.health_check_port)
    path                = "/readyz"
    matcher             = "200"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }

  tags = var.tags
}

resource "aws_lb_listener" "otlp" {
  for_each = var.listeners

  load_balancer_arn = aws_lb.this.arn
  port              = each.value.port
  # checkov:skip=CKV_AWS_2: TCP on purpose: TLS passes through the NLB and tracegate terminates it (end-to-end encryption, mTLS, PROXY v2 before the handshake).
  # checkov:skip=CKV_AWS_103: no TLS policy on a TCP listener; tracegate allows TLS 1.2 and 1.3 only (rustls).
  protocol = "TCP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.otlp[each.key].arn
  }

  tags = var.tags
}

resource "aws_vpc_endpoint_service" "this" {
  acceptance_required        = var.acceptance_required
  network_load_balancer_arns = [aws_lb.this.arn]
  allowed_principals         = var.allowed_principals
  private_dns_name           = var.private_dns_name
  supported_ip_address_types = ["ipv4"]

  tags = merge(var.tags, { Name = "${var.name}-otlp" })
}
