# Example values (terraform plan -var-file=example.tfvars); replace all of them.
name               = "tracegate-euw1"
vpc_id             = "vpc-0123456789abcdef0"
subnet_ids         = ["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb", "subnet-0cccccccccccccccc"]
allowed_principals = ["arn:aws:iam::444455556666:root"]
tags               = { service = "tracegate" }
