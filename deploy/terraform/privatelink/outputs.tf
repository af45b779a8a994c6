output "service_name" {
  description = "The endpoint service name customers use to create their interface VPC endpoint (com.amazonaws.vpce.<region>.vpce-svc-...)."
  value       = aws_vpc_endpoint_service.this.service_name
}

output "service_id" {
  description = "The endpoint service id (vpce-svc-...)."
  value       = aws_vpc_endpoint_service.this.id
}

output "private_dns_name_verification" {
  description = "TXT record to publish when private_dns_name is set."
  value       = aws_vpc_endpoint_service.this.private_dns_name_configuration
}

output "nlb_arn" {
  description = "ARN of the Network Load Balancer."
  value       = aws_lb.this.arn
}

output "target_group_arns" {
  description = "Target group ARN per listener; put them in the TargetGroupBindings of deploy/kubernetes/overlays/aws-privatelink."
  value       = { for k, tg in aws_lb_target_group.otlp : k => tg.arn }
}
